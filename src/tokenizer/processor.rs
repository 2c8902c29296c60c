//! What a secret does to a request: the tokenizer's processors.
//!
//! Owns: turning a checked secret plus request params into concrete edits — set a header
//! (`inject_processor`), set a header holding an HMAC of the body or of `msg`
//! (`inject_hmac_processor`), or replace a placeholder in the body while it streams
//! (`inject_body_processor`). HMAC comes from RustCrypto `hmac` + `sha2`.
//! Must not: buffer a body except for HMAC (which needs it whole, and is bounded).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::sealing::Params;
use crate::secret::{FmtArg, InjectHmacProcessor, Processor, SecretError};

pub const DEFAULT_PLACEHOLDER: &str = "{{ACCESS_TOKEN}}";

/// A concrete edit to make to the request.
pub enum Edit {
    /// Set header `name` to `value`, replacing any present.
    Header {
        name: String,
        value: Zeroizing<String>,
    },
    /// Needs the whole request body (or nothing, when `msg` is given) before the header is known.
    HmacOfBody {
        processor: InjectHmacProcessor,
        params: Params,
    },
    /// Replace a placeholder in the body as it streams.
    Body(StreamReplace),
}

/// Plan the edit for one processor; every fmt/dst rule is checked here, before any byte moves.
pub fn plan(processor: &Processor, params: &Params) -> Result<Edit, SecretError> {
    match processor {
        Processor::Inject(p) => {
            if p.token.is_empty() {
                return Err(SecretError::BadRequest("bad secret: missing token".into()));
            }
            let value = p.fmt_dst.apply_fmt(params, FmtArg::Str(&p.token))?;
            let name = p.fmt_dst.choose_dst(params)?;
            Ok(Edit::Header {
                name,
                value: Zeroizing::new(value),
            })
        }
        Processor::Hmac(p) => {
            if p.hash != "sha256" {
                return Err(SecretError::BadRequest(
                    "bad secret: unsupported hash function (only sha256)".into(),
                ));
            }
            if p.key.0.is_empty() {
                return Err(SecretError::BadRequest(
                    "bad secret: missing hmac key".into(),
                ));
            }
            // Check fmt and dst now so a bad request is refused before its body is read.
            p.fmt_dst.apply_fmt(params, FmtArg::Bin(&[]))?;
            p.fmt_dst.choose_dst(params)?;
            match params.get("msg") {
                Some(msg) => hmac_header(p, params, msg.as_bytes()),
                None => Ok(Edit::HmacOfBody {
                    processor: p.clone(),
                    params: params.clone(),
                }),
            }
        }
        Processor::Body(p) => {
            if p.token.is_empty() {
                return Err(SecretError::BadRequest("bad secret: missing token".into()));
            }
            let placeholder = params
                .get("placeholder")
                .map(String::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or(if p.placeholder.is_empty() {
                    DEFAULT_PLACEHOLDER
                } else {
                    &p.placeholder
                });
            Ok(Edit::Body(StreamReplace::new(
                placeholder.as_bytes(),
                p.token.as_bytes(),
            )))
        }
    }
}

/// The header edit for an HMAC processor over `msg`.
pub fn hmac_header(
    p: &InjectHmacProcessor,
    params: &Params,
    msg: &[u8],
) -> Result<Edit, SecretError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&p.key.0).expect("hmac accepts any key length");
    mac.update(msg);
    let sum = mac.finalize().into_bytes();
    let value = p.fmt_dst.apply_fmt(params, FmtArg::Bin(&sum))?;
    Ok(Edit::Header {
        name: p.fmt_dst.choose_dst(params)?,
        value: Zeroizing::new(value),
    })
}

/// Streaming search-and-replace that never holds more than one chunk plus
/// `needle.len() - 1` bytes: a match that might straddle chunks is carried to the next one.
pub struct StreamReplace {
    needle: Vec<u8>,
    with: Zeroizing<Vec<u8>>,
    carry: Vec<u8>,
}

impl StreamReplace {
    pub fn new(needle: &[u8], with: &[u8]) -> Self {
        StreamReplace {
            needle: needle.to_vec(),
            with: Zeroizing::new(with.to_vec()),
            carry: Vec::new(),
        }
    }

    /// Feed one chunk; returns the bytes that are final. With `end`, flushes everything.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(buf.len() + self.with.len());
        let mut i = 0;
        let finder = memchr::memmem::Finder::new(&self.needle);
        while let Some(pos) = finder.find(&buf[i..]) {
            out.extend_from_slice(&buf[i..i + pos]);
            out.extend_from_slice(&self.with);
            i += pos + self.needle.len();
        }
        if end {
            out.extend_from_slice(&buf[i..]);
        } else {
            let keep = (self.needle.len() - 1).min(buf.len() - i);
            let cut = buf.len() - keep;
            out.extend_from_slice(&buf[i..cut]);
            self.carry = buf[cut..].to_vec();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn edit(json: &str, params: &Params) -> Result<Edit, SecretError> {
        let c = Secret::from_json(json.as_bytes()).unwrap().check().unwrap();
        plan(&c.processor, params)
    }

    fn header(e: Edit) -> (String, String) {
        match e {
            Edit::Header { name, value } => (name, value.to_string()),
            _ => panic!("not a header edit"),
        }
    }

    #[test]
    fn inject_header() {
        let e = edit(
            r#"{"inject_processor":{"token":"tok"},"no_auth":{}}"#,
            &Params::new(),
        );
        assert_eq!(
            header(e.ok().unwrap()),
            ("Authorization".into(), "Bearer tok".into())
        );
        let e = edit(
            r#"{"inject_processor":{"token":""},"no_auth":{}}"#,
            &Params::new(),
        );
        assert!(e.is_err());
    }

    #[test]
    fn hmac_vector_and_msg_param() {
        let json = r#"{"inject_hmac_processor":{"key":"bXkgc2lnbmluZyBrZXk=","hash":"sha256"},"no_auth":{}}"#;
        let c = Secret::from_json(json.as_bytes()).unwrap().check().unwrap();
        let p = match c.processor {
            Processor::Hmac(p) => p,
            _ => unreachable!(),
        };
        let h = header(
            hmac_header(&p, &Params::new(), br#"{"amount":42}"#)
                .ok()
                .unwrap(),
        );
        assert_eq!(
            h.1,
            "Bearer 46b39f782cfe71e2df39c7198d0feb2f2daf186c9b75a5d42655f03179704c1b"
        );
        let mut params = Params::new();
        params.insert("msg".into(), r#"{"amount":42}"#.into());
        assert_eq!(header(edit(json, &params).ok().unwrap()).1, h.1);
        // %s is refused for binary values; sha1 is refused
        params.insert("fmt".into(), "%s".into());
        assert!(edit(json, &params).is_err());
        let sha1 = json.replace("sha256", "sha1");
        assert!(edit(&sha1, &Params::new()).is_err());
    }

    #[test]
    fn stream_replace_across_chunk_boundaries() {
        let body = b"{\"key\":\"{{ACCESS_TOKEN}}\",\"again\":\"{{ACCESS_TOKEN}}\"}{{ACCESS";
        for split in 1..body.len() {
            for step in [1usize, 2, 3, 7, 100] {
                let mut r = StreamReplace::new(b"{{ACCESS_TOKEN}}", b"real");
                let mut out = r.feed(&body[..split], false);
                for c in body[split..].chunks(step) {
                    out.extend(r.feed(c, false));
                }
                out.extend(r.feed(b"", true));
                assert_eq!(
                    out,
                    b"{\"key\":\"real\",\"again\":\"real\"}{{ACCESS".to_vec(),
                    "split {split} step {step}"
                );
            }
        }
    }

    #[test]
    fn body_placeholder_param() {
        let json = r#"{"inject_body_processor":{"token":"T"},"no_auth":{}}"#;
        let mut params = Params::new();
        params.insert("placeholder".into(), "XX".into());
        match edit(json, &params).ok().unwrap() {
            Edit::Body(mut r) => assert_eq!(r.feed(b"aXXb", true), b"aTb"),
            _ => panic!(),
        }
    }
}
