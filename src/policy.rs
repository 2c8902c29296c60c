//! Method and path rules: which requests of a route may go out with the credential.
//!
//! Owns: the rule syntax (`"GET,HEAD /repos/**"`), reading a request path the way an upstream
//! would (percent-decoded, ASCII case folded), refusing paths whose meaning is ambiguous (dot
//! segments, encoded slashes or backslashes, empty segments, control bytes), and the decision:
//! a matching `deny` rule refuses; then, if there are `allow` rules, one of them must match.
//! A rule may also name GraphQL operation types (`POST /graphql query`): it then looks at the
//! request body, a GraphQL-over-HTTP JSON object (or a batch of them), parsed with
//! `graphql-parser`. An allow rule matches when every operation in the document is of a named
//! type; a deny rule when any is; a body it cannot read matches a deny rule and no allow rule.
//! Must not: judge any string but the path that is forwarded, or echo a query string.
//!
//! Patterns are split on `/`; a segment is matched literally except `*` (any one segment),
//! `**` (any number of segments, none included) and a `*` inside a segment (any characters
//! but `/`, e.g. `v1*`). Matching ignores ASCII case on both sides (GitHub's owner and repository
//! names ignore it too, so `DELETE /repos/MyOrg/...` cannot slip past a rule for `myorg`) and a
//! trailing `/`.

use std::fmt;

/// A GraphQL operation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Query,
    Mutation,
    Subscription,
}

/// Largest request body read to judge a GraphQL rule (a larger one gets 413).
pub const GRAPHQL_BODY_LIMIT: usize = 64 * 1024;

/// Deepest nesting of `{`, `[` and `(` in a GraphQL document that is parsed at all: the parser
/// recurses per level, and a thread's stack is finite.
const GRAPHQL_MAX_DEPTH: usize = 64;

/// A parsed rule: its text (for messages and metrics), methods (None: any) and pattern.
#[derive(Debug, Clone)]
pub struct Rule {
    pub text: String,
    methods: Option<Vec<String>>,
    pattern: Vec<Vec<u8>>,
    /// GraphQL operation types (None: the rule does not look at the body).
    ops: Option<Vec<Op>>,
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
    /// `METHODS PATTERN [OPS]`: methods separated by `,` (or `*` for any), a pattern starting
    /// with `/`, and optionally GraphQL operation types separated by `,`.
    pub fn parse(text: &str) -> Result<Rule, String> {
        let mut words = text.split_whitespace();
        let (Some(method_word), Some(pattern)) = (words.next(), words.next()) else {
            return Err(format!(
                "rule {text:?}: want \"METHODS /path/pattern [query,mutation,subscription]\", \
                 e.g. \"GET,HEAD /repos/**\""
            ));
        };
        let ops_word = words.next();
        if words.next().is_some() {
            return Err(format!(
                "rule {text:?}: at most three words: methods, a path pattern, GraphQL operation \
                 types"
            ));
        }
        let ops = match ops_word {
            None => None,
            Some(w) => {
                let mut ops = Vec::new();
                for o in w.split(',') {
                    ops.push(match o.to_ascii_lowercase().as_str() {
                        "query" => Op::Query,
                        "mutation" => Op::Mutation,
                        "subscription" => Op::Subscription,
                        _ => {
                            return Err(format!(
                                "rule {text:?}: {o:?} is not a GraphQL operation type (query, \
                                 mutation, subscription)"
                            ))
                        }
                    });
                }
                Some(ops)
            }
        };
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
        let text = match ops_word {
            Some(o) => format!("{method_word} {pattern} {o}"),
            None => format!("{method_word} {pattern}"),
        };
        Ok(Rule {
            text,
            methods,
            pattern: segs,
            ops,
        })
    }

    /// Whether the rule names GraphQL operation types (and so needs the body).
    pub fn has_ops(&self) -> bool {
        self.ops.is_some()
    }

    /// Method and path only.
    fn route_matches(&self, method: &str, path: &[Vec<u8>]) -> bool {
        let method_ok = self
            .methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m.eq_ignore_ascii_case(method)));
        method_ok && segments_match(&self.pattern, path)
    }

    /// As an allow rule: method, path, and every operation of a named type.
    fn allows(&self, method: &str, path: &[Vec<u8>], body: &Body) -> bool {
        self.route_matches(method, path)
            && match &self.ops {
                None => true,
                Some(ops) => body
                    .ops()
                    .is_some_and(|found| found.iter().all(|o| ops.contains(o))),
            }
    }

    /// As a deny rule: method, path, and any operation of a named type (or an unreadable body).
    fn denies(&self, method: &str, path: &[Vec<u8>], body: &Body) -> bool {
        self.route_matches(method, path)
            && match &self.ops {
                None => true,
                Some(ops) => body
                    .ops()
                    .is_none_or(|found| found.iter().any(|o| ops.contains(o))),
            }
    }
}

/// A request body and its GraphQL operations, parsed at most once however many rules ask.
struct Body<'a> {
    bytes: Option<&'a [u8]>,
    ops: std::cell::OnceCell<Option<Vec<Op>>>,
}

impl Body<'_> {
    fn ops(&self) -> Option<&[Op]> {
        self.ops.get_or_init(|| graphql_ops(self.bytes)).as_deref()
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

    /// Does judging this request need its body (a GraphQL rule matches its method and path)?
    pub fn needs_body(&self, method: &str, path: &str) -> bool {
        if !self.allow.iter().chain(&self.deny).any(Rule::has_ops) {
            return false; // the usual case: no rule looks at bodies
        }
        let Ok(segs) = split_path(path) else {
            return false;
        };
        self.allow
            .iter()
            .chain(&self.deny)
            .any(|r| r.has_ops() && r.route_matches(method, &segs))
    }

    /// May `method` go to `path` (the path part of the request target, as forwarded)? `body`
    /// is the request body when [`Policy::needs_body`] said so.
    pub fn check(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<(), Refusal> {
        let segs = split_path(path).map_err(|why| Refusal {
            status: 400,
            reason: format!("path refused by the route's policy: {why}"),
            label: "bad_path".into(),
        })?;
        let body = Body {
            bytes: body,
            ops: Default::default(),
        };
        if let Some(rule) = self.deny.iter().find(|r| r.denies(method, &segs, &body)) {
            return Err(Refusal {
                status: 403,
                reason: format!("forbidden by the route's policy: deny rule {:?}", rule.text),
                label: rule.text.clone(),
            });
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|r| r.allows(method, &segs, &body)) {
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

/// The operation types of a GraphQL-over-HTTP body: `{"query": "..."}` or a batch (array) of
/// them. None when it is not one, or a document has no operation.
fn graphql_ops(body: Option<&[u8]>) -> Option<Vec<Op>> {
    use graphql_parser::query::{Definition, OperationDefinition};
    fn doc_ops(v: &serde_json::Value, out: &mut Vec<Op>) -> Option<()> {
        let query = v.as_object()?.get("query")?.as_str()?;
        let mut depth = 0usize;
        for b in query.bytes() {
            // Brackets inside strings count too: an over-estimate only refuses more.
            match b {
                b'{' | b'[' | b'(' => depth += 1,
                b'}' | b']' | b')' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > GRAPHQL_MAX_DEPTH {
                return None;
            }
        }
        let doc = graphql_parser::parse_query::<&str>(query).ok()?;
        let before = out.len();
        for d in doc.definitions {
            if let Definition::Operation(op) = d {
                out.push(match op {
                    OperationDefinition::SelectionSet(_) | OperationDefinition::Query(_) => {
                        Op::Query
                    }
                    OperationDefinition::Mutation(_) => Op::Mutation,
                    OperationDefinition::Subscription(_) => Op::Subscription,
                });
            }
        }
        (out.len() > before).then_some(())
    }
    let v: serde_json::Value = serde_json::from_slice(body?).ok()?;
    let mut out = Vec::new();
    match &v {
        serde_json::Value::Array(items) if !items.is_empty() => {
            for item in items {
                doc_ops(item, &mut out)?;
            }
        }
        other => doc_ops(other, &mut out)?,
    }
    Some(out)
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
            assert!(p.check("GET", ok, None).is_ok(), "{ok}");
        }
        for bad in [
            "/repos/o/issues",
            "/repos/o/r/pulls",
            "/users",
            "/user/keys",
            "/v2/models",
        ] {
            assert_eq!(p.check("GET", bad, None).unwrap_err().status, 403, "{bad}");
        }
        assert!(p.check("POST", "/user", None).is_err());
        assert!(policy(&["* /**"], &[]).check("PATCH", "/", None).is_ok());
    }

    #[test]
    fn deny_wins_and_allow_lists_close_the_rest() {
        let p = policy(&["GET,HEAD /**"], &["* /repos/*/secret/**"]);
        assert!(p.check("HEAD", "/repos/o/r", None).is_ok());
        let e = p.check("GET", "/repos/o/secret/x", None).unwrap_err();
        assert_eq!((e.status, e.label.as_str()), (403, "* /repos/*/secret/**"));
        assert!(e.reason.contains("deny rule"));
        let e = p.check("DELETE", "/repos/o/r", None).unwrap_err();
        assert_eq!((e.status, e.label.as_str()), (403, "no_allow_rule"));
        // Deny only: the rest is allowed.
        let p = policy(&[], &["DELETE /**"]);
        assert!(p.check("GET", "/x", None).is_ok());
        assert!(p.check("DELETE", "/x", None).is_err());
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
            assert_eq!(
                p.check("GET", sneaky, None).unwrap_err().status,
                403,
                "{sneaky}"
            );
        }
        assert_eq!(
            policy(&[], &["delete /**"])
                .check("delete", "/x", None)
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
                p.check("GET", ambiguous, None).unwrap_err().status,
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
            "POST /graphql query extra",
            "POST /graphql queries",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
        let e = Policy::parse(&["GET /ok".into(), "nope".into()], &[]).unwrap_err();
        assert!(e.starts_with("allow[1]: "), "{e}");
    }
}

#[cfg(test)]
mod graphql_tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Policy::parse(&v(allow), &v(deny)).unwrap()
    }

    fn body(q: &str) -> Vec<u8> {
        serde_json::json!({ "query": q }).to_string().into_bytes()
    }

    #[test]
    fn read_only_graphql() {
        let p = policy(&["GET,HEAD /**", "POST /graphql query"], &[]);
        assert!(p.needs_body("POST", "/graphql") && !p.needs_body("GET", "/graphql"));
        assert!(!p.needs_body("POST", "/repos/x"));
        for ok in [
            "{ viewer { login } }",
            "query Q { viewer { login } }",
            "query A { a } query B { b } fragment F on User { login }",
            "# mutation { x }\n{ viewer { bio } }",
            "{ repo(name: \"mutation { x }\") { id } }",
        ] {
            assert!(p.check("POST", "/graphql", Some(&body(ok))).is_ok(), "{ok}");
        }
        for bad in [
            "mutation { addStar(input: {}) { clientMutationId } }",
            "query A { a } mutation B { b }",
            "subscription { x }",
            "not graphql {",
            "",
            "fragment F on User { login }",
        ] {
            let e = p.check("POST", "/graphql", Some(&body(bad))).unwrap_err();
            assert_eq!(
                (e.status, e.label.as_str()),
                (403, "no_allow_rule"),
                "{bad}"
            );
        }
        let batch = serde_json::json!([{ "query": "{ a }" }, { "query": "mutation { b }" }]);
        assert!(p
            .check("POST", "/graphql", Some(batch.to_string().as_bytes()))
            .is_err());
        let batch = serde_json::json!([{ "query": "{ a }" }, { "query": "query { b }" }]);
        assert!(p
            .check("POST", "/graphql", Some(batch.to_string().as_bytes()))
            .is_ok());
        for junk in [&b"[]"[..], b"{}", b"{\"query\": 1}", b"not json", b"[1]"] {
            assert!(p.check("POST", "/graphql", Some(junk)).is_err());
        }
        assert!(p.check("POST", "/graphql", None).is_err());
        // Nested too deeply to parse: refused, never a stack overflow.
        let deep = format!("{{ a {} }}", "{ b ".repeat(10_000) + &"}".repeat(10_000));
        assert!(p.check("POST", "/graphql", Some(&body(&deep))).is_err());
    }

    #[test]
    fn deny_rules_match_any_operation_or_an_unreadable_body() {
        let p = policy(&[], &["POST /graphql mutation"]);
        assert!(p
            .check("POST", "/graphql", Some(&body("{ viewer { login } }")))
            .is_ok());
        for bad in [
            "query A { a } mutation B { b }",
            "mutation { x }",
            "garbage {",
        ] {
            let e = p.check("POST", "/graphql", Some(&body(bad))).unwrap_err();
            assert_eq!(e.label, "POST /graphql mutation", "{bad}");
        }
        assert!(p.check("POST", "/graphql", Some(b"nope")).is_err());
    }
}
