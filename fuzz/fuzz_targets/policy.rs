//! `policy`: route rules (`Rule::parse`) and the decision (`Policy::check`) on a client's
//! method, path and body, GraphQL bodies included. The path and body are the hostile parts.
//! Input: four fields separated by NUL bytes: rule, method, path, body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxypilot::policy::{Policy, Rule};

/// The path's segments as an upstream may read them: %-decoded (lossily) and lower-cased.
fn decoded_segments(path: &str) -> Vec<String> {
    path.split('/')
        .map(|seg| {
            let mut out = Vec::new();
            let b = seg.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' && i + 2 < b.len() {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                    if let Ok(v) = u8::from_str_radix(hex, 16) {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                }
                out.push(b[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).to_ascii_lowercase()
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = s.splitn(4, '\0');
    let (rule, method, path, body) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("GET"),
        parts.next().unwrap_or("/"),
        parts.next(),
    );
    let body = body.map(str::as_bytes);

    // Whatever the rule, a path with a dot segment in any spelling is never let through.
    let dotted = decoded_segments(path).iter().any(|s| s == "." || s == "..");
    // Letter case never changes a decision.
    let same_either_case = |p: &Policy| {
        let a = p.check(method, path, body).map_err(|r| r.status);
        let b = p
            .check(method, &path.to_ascii_uppercase(), body)
            .map_err(|r| r.status);
        assert_eq!(a, b, "case changed the decision for {path:?}");
        a
    };

    if let Ok(r) = Rule::parse(rule) {
        assert!(r.text.starts_with(|c: char| !c.is_whitespace()));
        let allow = Policy {
            allow: vec![r.clone()],
            deny: vec![],
        };
        let deny = Policy {
            allow: vec![],
            deny: vec![r],
        };
        for p in [&allow, &deny] {
            let got = same_either_case(p);
            if dotted {
                assert!(got.is_err(), "dot segment let through: {path:?}");
            }
            let _ = p.needs_body(method, path);
        }
    }
    // Deny everything: nothing passes.
    let all = Policy::parse(&[], &["* /**".into()]).unwrap();
    assert!(all.check(method, path, body).is_err());
    // GraphQL: any body, never a panic or a stack overflow; queries only.
    let gql = Policy::parse(&["* /** query".into()], &[]).unwrap();
    let _ = same_either_case(&gql);
});
