//! Sealed secrets: libsodium anonymous sealed boxes and the keys that make and open them.
//!
//! Owns the key formats (`OPEN_KEY` = 32 random bytes in hex, `SEAL_KEY` = its X25519 public
//! key in hex), sealing (`base64std(crypto_box_seal(json, SEAL_KEY))`), opening, and the
//! `Proxy-Tokenizer` header wire format (`<sealed>[; {"param":"value"}]`).
//! The cryptography is RustCrypto's `crypto_box`; nothing here implements a primitive.
//! Must not: print key material or plaintext through `Debug`, logs or error messages.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use crypto_box::{PublicKey, SecretKey};
use std::collections::BTreeMap;
use std::fmt;
use zeroize::Zeroizing;

/// The tokenizer's private key. Opens sealed secrets; never leaves the tokenizer.
pub struct OpenKey(SecretKey);

/// The tokenizer's public key. Anyone may seal to it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey(PublicKey);

impl fmt::Debug for OpenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpenKey(<redacted>)")
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealKey({})", self.to_hex())
    }
}

fn key_bytes(hex_str: &str, what: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let hex_str = hex_str.trim();
    let mut out = Zeroizing::new([0u8; 32]);
    if hex_str.len() != 64 {
        return Err(format!(
            "{what} must be 64 hex characters (32 bytes), got {} characters",
            hex_str.len()
        ));
    }
    hex::decode_to_slice(hex_str, out.as_mut()).map_err(|_| format!("{what} is not valid hex"))?;
    Ok(out)
}

impl OpenKey {
    /// Parse a hex `OPEN_KEY`. The error never echoes the input.
    pub fn from_hex(hex_str: &str) -> Result<Self, String> {
        let bytes = key_bytes(hex_str, "OPEN_KEY")?;
        Ok(OpenKey(SecretKey::from_bytes(*bytes)))
    }

    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        OpenKey(SecretKey::generate(&mut rand_core::OsRng))
    }

    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.to_bytes()))
    }

    pub fn seal_key(&self) -> SealKey {
        SealKey(self.0.public_key())
    }

    /// Open a base64 sealed box (surrounding whitespace ignored) into its plaintext.
    pub fn open(&self, sealed_b64: &str) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let ct = B64
            .decode(sealed_b64.trim())
            .map_err(|_| OpenError::Encoding)?;
        self.0
            .unseal(&ct)
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Decryption)
    }
}

impl SealKey {
    pub fn from_hex(hex_str: &str) -> Result<Self, String> {
        let bytes = key_bytes(hex_str, "SEAL_KEY")?;
        Ok(SealKey(PublicKey::from_bytes(*bytes)))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// Seal `plaintext` to this key: base64std of libsodium's `crypto_box_seal`.
    pub fn seal(&self, plaintext: &[u8]) -> String {
        let ct = self
            .0
            .seal(&mut rand_core::OsRng, plaintext)
            .expect("sealing to a valid public key cannot fail");
        B64.encode(ct)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    Encoding,
    Decryption,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Encoding => f.write_str("bad Proxy-Tokenizer encoding (not base64)"),
            OpenError::Decryption => f.write_str("failed Proxy-Tokenizer decryption"),
        }
    }
}

/// Request-time processor parameters (`dst`, `fmt`, `msg`, `placeholder`, ...).
pub type Params = BTreeMap<String, String>;

/// One `Proxy-Tokenizer` header: a sealed secret and optional parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenizerHeader {
    pub sealed: String,
    pub params: Params,
}

impl fmt::Debug for TokenizerHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenizerHeader")
            .field("sealed", &"<redacted>")
            .field("params", &self.params)
            .finish()
    }
}

impl TokenizerHeader {
    /// Parse `<sealed>[; <json object of strings>]`, as the reference does (split at the first `;`).
    pub fn parse(value: &str) -> Result<Self, String> {
        let (sealed, params) = match value.split_once(';') {
            Some((s, p)) => (s.trim(), p.trim()),
            None => (value.trim(), ""),
        };
        if sealed.is_empty() {
            return Err("bad tokenizer header: no sealed secret".into());
        }
        let params = if params.is_empty() {
            Params::new()
        } else {
            serde_json::from_str::<Params>(params).map_err(|e| {
                format!(
                    "bad tokenizer header params: {}",
                    crate::secret::json_error(&e)
                )
            })?
        };
        Ok(TokenizerHeader {
            sealed: sealed.to_string(),
            params,
        })
    }

    /// The header value: the sealed secret, then `; {json}` when there are params. The JSON is
    /// ASCII only (other characters as `\uXXXX` escapes, which JSON readers decode back), since
    /// a header value with bytes above 0x7f is refused by many readers, ours included.
    pub fn format(&self) -> String {
        if self.params.is_empty() {
            self.sealed.clone()
        } else {
            let json = serde_json::to_string(&self.params).expect("string map serializes");
            format!("{}; {}", self.sealed, ascii_json(&json))
        }
    }
}

/// Escape every non-ASCII character of serialized JSON as `\uXXXX` (UTF-16, so characters
/// beyond the BMP become surrogate pairs). Outside strings JSON is ASCII already.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips() {
        let k = OpenKey::generate();
        let sealed = k.seal_key().seal(b"{\"x\":1}");
        assert_eq!(&k.open(&sealed).unwrap()[..], b"{\"x\":1}");
        // whitespace around the base64 is ignored
        assert_eq!(&k.open(&format!("  {sealed}\n")).unwrap()[..], b"{\"x\":1}");
    }

    #[test]
    fn other_key_cannot_open() {
        let a = OpenKey::generate();
        let b = OpenKey::generate();
        let sealed = a.seal_key().seal(b"hello");
        assert_eq!(b.open(&sealed).unwrap_err(), OpenError::Decryption);
        assert_eq!(a.open("not base64!").unwrap_err(), OpenError::Encoding);
    }

    #[test]
    fn key_hex_round_trip_and_errors() {
        let k = OpenKey::generate();
        let again = OpenKey::from_hex(&k.to_hex()).unwrap();
        assert_eq!(k.seal_key(), again.seal_key());
        let e = OpenKey::from_hex("abcd").unwrap_err();
        assert!(e.contains("64 hex"), "{e}");
        let e = OpenKey::from_hex(&"zz".repeat(32)).unwrap_err();
        assert!(e.contains("not valid hex") && !e.contains("zz"), "{e}");
    }

    #[test]
    fn header_parse_and_format() {
        let h = TokenizerHeader::parse("  abc= ; {\"dst\":\"X\",\"fmt\":\"t=%s\"} ").unwrap();
        assert_eq!(h.sealed, "abc=");
        assert_eq!(h.params.get("dst").unwrap(), "X");
        assert_eq!(h.format(), "abc=; {\"dst\":\"X\",\"fmt\":\"t=%s\"}");
        let plain = TokenizerHeader::parse("abc=").unwrap();
        assert!(plain.params.is_empty());
        assert_eq!(plain.format(), "abc=");
        assert!(TokenizerHeader::parse(" ; {}").is_err());
        assert!(TokenizerHeader::parse("abc; {not json").is_err());
        let e = TokenizerHeader::parse("abc; {\"dst\": 12345678}").unwrap_err();
        assert!(!e.contains("12345678"), "{e}");
        assert!(!format!("{h:?}").contains("abc="));
        // Non-ASCII params go out as JSON escapes and read back the same.
        let mut params = Params::new();
        params.insert("fmt".into(), "Bearer %s é 😀".into());
        let h = TokenizerHeader {
            sealed: "abc=".into(),
            params,
        };
        let v = h.format();
        assert!(
            v.is_ascii() && v.contains("\\u00e9") && v.contains("\\ud83d\\ude00"),
            "{v}"
        );
        assert_eq!(TokenizerHeader::parse(&v).unwrap(), h);
    }
}
