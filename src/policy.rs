//! Method and path rules: which requests of a route may go out with the credential.
//!
//! Owns: the rule syntax (`"GET,HEAD /repos/**"`), reading a request path the way an upstream
//! would (percent-decoded, ASCII case folded), refusing paths whose meaning is ambiguous (dot
//! segments, encoded slashes or backslashes, empty segments, control bytes), and the decision:
//! a matching `deny` rule refuses; then, if there are `allow` rules, one of them must match.
//! Must not: judge any string but the path that is forwarded, or echo a query string.
//!
//! Patterns are split on `/`; a segment is matched literally except `*` (any one segment),
//! `**` (any number of segments, none included) and a `*` inside a segment (any characters
//! but `/`, e.g. `v1*`). Matching ignores ASCII case on both sides (GitHub's owner and repository
//! names ignore it too, so `DELETE /repos/MyOrg/...` cannot slip past a rule for `myorg`) and a
//! trailing `/`.

use std::fmt;

/// A parsed rule: its text (for messages and metrics), methods (None: any) and pattern.
#[derive(Debug, Clone)]
pub struct Rule {
    pub text: String,
    methods: Option<Vec<String>>,
    pattern: Vec<Vec<u8>>,
}

/// A route's rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

/// Why a request was refused: an HTTP status, a short reason, and a metric label (the rule's
/// text, or a fixed word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
    pub label: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl Rule {
    /// `METHODS PATTERN`: methods separated by `,` (or `*` for any), a pattern starting with `/`.
    pub fn parse(text: &str) -> Result<Rule, String> {
        let mut words = text.split_whitespace();
        let (Some(method_word), Some(pattern)) = (words.next(), words.next()) else {
            return Err(format!(
                "rule {text:?}: want \"METHODS /path/pattern\", e.g. \"GET,HEAD /repos/**\""
            ));
        };
        if words.next().is_some() {
            return Err(format!(
                "rule {text:?}: two words only, methods and a path pattern (GraphQL operation \
                 types are not supported yet)"
            ));
        }
        let methods = if method_word == "*" {
            None
        } else {
            let mut list = Vec::new();
            for m in method_word.split(',') {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(format!("rule {text:?}: {m:?} is not a method (or *)"));
                }
                list.push(m.to_ascii_uppercase());
            }
            Some(list)
        };
        if !pattern.starts_with('/') {
            return Err(format!("rule {text:?}: the path pattern must start with /"));
        }
        if pattern.contains(['?', '#', '%', '\\']) {
            return Err(format!(
                "rule {text:?}: a pattern is a plain path (no query, fragment, %-escapes or \\)"
            ));
        }
        let mut segs: Vec<Vec<u8>> = pattern[1..]
            .split('/')
            .map(|s| s.to_ascii_lowercase().into_bytes())
            .collect();
        if segs.last().is_some_and(|s| s.is_empty()) {
            segs.pop();
        }
        if segs.iter().any(|s| s.is_empty() || s == b"." || s == b"..") {
            return Err(format!(
                "rule {text:?}: empty, . or .. segments never match (requests with them are \
                 refused)"
            ));
        }
        if segs
            .iter()
            .any(|s| s != b"**" && s.windows(2).any(|w| w == b"**"))
        {
            return Err(format!("rule {text:?}: ** must be a whole segment"));
        }
        Ok(Rule {
            text: format!("{method_word} {pattern}"),
            methods,
            pattern: segs,
        })
    }

    fn matches(&self, method: &str, path: &[Vec<u8>]) -> bool {
        let method_ok = self
            .methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m.eq_ignore_ascii_case(method)));
        method_ok && segments_match(&self.pattern, path)
    }
}

impl Policy {
    /// Parse `allow` and `deny` lists; errors name the list and the position.
    pub fn parse(allow: &[String], deny: &[String]) -> Result<Policy, String> {
        let list = |name: &str, texts: &[String]| -> Result<Vec<Rule>, String> {
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| Rule::parse(t).map_err(|e| format!("{name}[{i}]: {e}")))
                .collect()
        };
        Ok(Policy {
            allow: list("allow", allow)?,
            deny: list("deny", deny)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// May `method` go to `path` (the path part of the request target, as forwarded)?
    pub fn check(&self, method: &str, path: &str) -> Result<(), Refusal> {
        let segs = split_path(path).map_err(|why| Refusal {
            status: 400,
            reason: format!("path refused by the route's policy: {why}"),
            label: "bad_path".into(),
        })?;
        if let Some(rule) = self.deny.iter().find(|r| r.matches(method, &segs)) {
            return Err(Refusal {
                status: 403,
                reason: format!("forbidden by the route's policy: deny rule {:?}", rule.text),
                label: rule.text.clone(),
            });
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|r| r.matches(method, &segs)) {
            return Err(Refusal {
                status: 403,
                reason: format!(
                    "forbidden by the route's policy: no allow rule matches {method} (allowed: {})",
                    self.allow
                        .iter()
                        .map(|r| r.text.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                label: "no_allow_rule".into(),
            });
        }
        Ok(())
    }
}

/// A request path as an upstream reads it: segments percent-decoded and lower-cased, or why it
/// is ambiguous. A trailing `/` is dropped.
fn split_path(path: &str) -> Result<Vec<Vec<u8>>, &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("it does not start with /");
    };
    let mut raw: Vec<&str> = rest.split('/').collect();
    if raw.last() == Some(&"") {
        raw.pop();
    }
    let mut out = Vec::with_capacity(raw.len());
    for seg in raw {
        if seg.is_empty() {
            return Err("empty path segment (//)");
        }
        let mut bytes = Vec::with_capacity(seg.len());
        let mut it = seg.bytes();
        while let Some(b) = it.next() {
            let b = if b == b'%' {
                let hex = [it.next(), it.next()];
                let (Some(h), Some(l)) = (hex[0], hex[1]) else {
                    return Err("bad %-escape");
                };
                let v = std::str::from_utf8(&[h, l])
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
                    .ok_or("bad %-escape")?;
                if v == b'/' || v == b'%' {
                    // An encoded slash splits a segment for some servers and not others; an
                    // encoded % would be decoded twice by some.
                    return Err("encoded / or % in the path");
                }
                v
            } else {
                b
            };
            if b == b'\\' {
                return Err("backslash in the path");
            }
            if b < 0x20 || b == 0x7f {
                return Err("control character in the path");
            }
            bytes.push(b.to_ascii_lowercase());
        }
        if bytes == b"." || bytes == b".." {
            return Err("dot segment (. or ..) in the path");
        }
        out.push(bytes);
    }
    Ok(out)
}

/// Pattern segments against path segments (`**` = any number of segments).
fn segments_match(pattern: &[Vec<u8>], path: &[Vec<u8>]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == b"**" => (0..=path.len()).any(|i| segments_match(rest, &path[i..])),
        Some((p, rest)) => match path.split_first() {
            Some((s, path_rest)) => segment_match(p, s) && segments_match(rest, path_rest),
            None => false,
        },
    }
}

/// One segment: `*` matches any run of bytes (within the segment).
fn segment_match(p: &[u8], s: &[u8]) -> bool {
    match p.iter().position(|&b| b == b'*') {
        None => p == s,
        Some(i) => {
            let (head, tail) = (&p[..i], &p[i + 1..]);
            s.starts_with(head) && (head.len()..=s.len()).any(|j| segment_match(tail, &s[j..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Policy::parse(&v(allow), &v(deny)).unwrap()
    }

    #[test]
    fn globs() {
        let p = policy(
            &["GET /repos/*/*/issues/**", "GET /user", "GET /v1*/models"],
            &[],
        );
        for ok in [
            "/repos/o/r/issues",
            "/repos/o/r/issues/",
            "/repos/o/r/issues/1/comments",
            "/user",
            "/user/",
            "/v1/models",
            "/v1beta/models",
        ] {
            assert!(p.check("GET", ok).is_ok(), "{ok}");
        }
        for bad in [
            "/repos/o/issues",
            "/repos/o/r/pulls",
            "/users",
            "/user/keys",
            "/v2/models",
        ] {
            assert_eq!(p.check("GET", bad).unwrap_err().status, 403, "{bad}");
        }
        assert!(p.check("POST", "/user").is_err());
        assert!(policy(&["* /**"], &[]).check("PATCH", "/").is_ok());
    }

    #[test]
    fn deny_wins_and_allow_lists_close_the_rest() {
        let p = policy(&["GET,HEAD /**"], &["* /repos/*/secret/**"]);
        assert!(p.check("HEAD", "/repos/o/r").is_ok());
        let e = p.check("GET", "/repos/o/secret/x").unwrap_err();
        assert_eq!((e.status, e.label.as_str()), (403, "* /repos/*/secret/**"));
        assert!(e.reason.contains("deny rule"));
        let e = p.check("DELETE", "/repos/o/r").unwrap_err();
        assert_eq!((e.status, e.label.as_str()), (403, "no_allow_rule"));
        // Deny only: the rest is allowed.
        let p = policy(&[], &["DELETE /**"]);
        assert!(p.check("GET", "/x").is_ok());
        assert!(p.check("DELETE", "/x").is_err());
    }

    #[test]
    fn spellings_an_upstream_reads_the_same_cannot_slip_past() {
        let p = policy(&["GET /**"], &["* /repos/myorg/secret/**"]);
        for sneaky in [
            "/repos/MyOrg/Secret/x",
            "/repos/myorg/secre%74/x",
            "/repos/myorg/%73ecret",
            "/repos/%4D%59org/secret",
        ] {
            assert_eq!(p.check("GET", sneaky).unwrap_err().status, 403, "{sneaky}");
        }
        assert_eq!(
            policy(&[], &["delete /**"])
                .check("delete", "/x")
                .unwrap_err()
                .status,
            403
        );
        for ambiguous in [
            "/repos/myorg/x/../secret/y",
            "/repos/myorg/x/%2e%2e/secret",
            "/repos/myorg/x/%2E./secret",
            "/repos/myorg/./secret",
            "/repos/myorg%2fsecret/x",
            "/repos/myorg%252fsecret/x",
            "/repos//myorg/secret",
            "/repos/myorg\\secret",
            "/repos/myorg%5csecret",
            "/repos/my%00org",
            "/repos/%zz",
            "/repos/%4",
            "repos/x",
        ] {
            assert_eq!(
                p.check("GET", ambiguous).unwrap_err().status,
                400,
                "{ambiguous}"
            );
        }
    }

    #[test]
    fn bad_rules_are_clear_errors() {
        for bad in [
            "GET",
            "GET repos/**",
            "GET /a/**b",
            "GET /a/../b",
            "GET /a//b",
            "GET /a?x=1",
            "GET /a%2f",
            "G3T /a",
            "GET, /a",
            "POST /graphql query",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
        let e = Policy::parse(&["GET /ok".into(), "nope".into()], &[]).unwrap_err();
        assert!(e.starts_with("allow[1]: "), "{e}");
    }
}
