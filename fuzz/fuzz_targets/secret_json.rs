//! `secret::Secret::from_json` -> `check` -> `processor::plan`, and the body edit it makes.
//!
//! Input: `<secret json> NUL <params and body, read with arbitrary>`.
//! Invariants: never panics; no error text and no log summary ever contains a secret value.
//! To test the latter soundly, every string under a `token`, `key` or `digest` key of the
//! (valid) JSON gets `SECRETMARKER` put in front of it (still valid base64 for `key`/`digest`),
//! inputs that already hold the marker anywhere are skipped, and then the marker must not
//! appear in any error or summary. An inject_body edit must equal a plain replace of the body.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use proxypilot::tokenizer::processor::{plan, Edit, DEFAULT_PLACEHOLDER};
use proxypilot::sealing::Params;
use proxypilot::secret::{Processor, Secret};
use serde_json::Value;

const MARKER: &str = "SECRETMARKER";

#[derive(Arbitrary, Debug)]
enum Key {
    Dst,
    Fmt,
    Msg,
    Placeholder,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Rest {
    params: Vec<(Key, String)>,
    body: Vec<u8>,
    chunks: Vec<u8>,
}

/// Put the marker in front of every string below a secret-holding key.
fn plant(v: &mut Value, under_secret: bool) {
    match v {
        Value::String(s) if under_secret => *s = format!("{MARKER}{s}"),
        Value::Array(a) => a.iter_mut().for_each(|x| plant(x, under_secret)),
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                plant(
                    x,
                    under_secret || ["token", "key", "digest"].contains(&k.as_str()),
                );
            }
        }
        _ => {}
    }
}

fn replace_all(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Run one secret through the whole pipeline; returns every text a client or log could see.
fn run(json: &[u8], params: &Params, body: &[u8], chunks: &[u8]) -> Vec<String> {
    let mut seen = Vec::new();
    let secret = match Secret::from_json(json) {
        Ok(s) => s,
        Err(e) => {
            seen.push(e.to_string());
            return seen;
        }
    };
    let checked = match secret.check() {
        Ok(c) => c,
        Err(e) => {
            seen.push(e.to_string());
            return seen;
        }
    };
    seen.push(checked.summary());
    match plan(&checked.processor, params) {
        Err(e) => seen.push(e.to_string()),
        Ok(Edit::Header { name, .. }) => {
            assert!(
                http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
                "{name:?}"
            );
        }
        Ok(Edit::HmacOfBody { processor, params }) => {
            if let Err(e) = proxypilot::tokenizer::processor::hmac_header(&processor, &params, body) {
                seen.push(e.to_string());
            }
        }
        Ok(Edit::Body(mut r)) => {
            let Processor::Body(p) = &checked.processor else {
                panic!("a body edit from another processor");
            };
            let needle = [
                params.get("placeholder").map(String::as_str),
                Some(&p.placeholder),
            ]
            .into_iter()
            .flatten()
            .find(|s| !s.is_empty())
            .unwrap_or(DEFAULT_PLACEHOLDER);
            // Feed the body in fuzzer-chosen pieces; the result is a plain replace.
            let mut out = Vec::new();
            let mut rest = body;
            for &c in chunks {
                let n = (c as usize).min(rest.len());
                out.extend(r.feed(&rest[..n], false));
                rest = &rest[n..];
            }
            out.extend(r.feed(rest, true));
            assert!(
                out == replace_all(body, needle.as_bytes(), p.token.as_bytes()),
                "streamed replace differs from a plain replace (needle {needle:?}, chunks {chunks:?})"
            );
        }
    }
    seen
}

fuzz_target!(|data: &[u8]| {
    let (json, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(rest) = Rest::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    let params: Params = rest
        .params
        .into_iter()
        .map(|(k, v)| {
            let k = match k {
                Key::Dst => "dst".to_string(),
                Key::Fmt => "fmt".to_string(),
                Key::Msg => "msg".to_string(),
                Key::Placeholder => "placeholder".to_string(),
                Key::Other(o) => o,
            };
            (k, v)
        })
        .collect();

    // The input as it is: must not panic.
    run(json, &params, &rest.body, &rest.chunks);

    // With the marker planted in every secret value: it never shows.
    if String::from_utf8_lossy(data)
        .to_ascii_lowercase()
        .contains("secretmarker")
    {
        return;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    plant(&mut v, false);
    let planted = serde_json::to_vec(&v).unwrap();
    for text in run(&planted, &params, &rest.body, &rest.chunks) {
        assert!(!text.contains(MARKER), "a secret value leaks: {text:?}");
    }
});
