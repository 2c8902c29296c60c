//! The parsers the fuzz targets drive (fuzz/, `make fuzz`), held to concrete answers for
//! hand-picked nasty inputs (the seeds under fuzz/seeds/) and for every input fuzzing found.
//! An input that shows a bug not fixed yet is a test marked `#[ignore = "bug: ..."]`.

use proxypilot::host::{check_dns_name, Authority};
use proxypilot::sealing::{Params, TokenizerHeader};
use proxypilot::secret::{canonical_header_name, FmtArg, FmtDst, Processor, Secret};
use proxypilot::sidecar::config::{from_yaml, parse_tokenizer_url};
use proxypilot::tokenizer::flysrc;
use proxypilot::tokenizer::processor::{plan, Edit, StreamReplace, DEFAULT_PLACEHOLDER};

fn params(kv: &[(&str, &str)]) -> Params {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------- host::Authority (fuzz target `authority`) ----------

#[test]
fn authority_accepts_and_round_trips() {
    for (input, host, port, canon) in [
        (
            "API.GitHub.com.:8443",
            "api.github.com",
            Some(8443),
            "api.github.com:8443",
        ),
        (
            "[::FFFF:1.2.3.4]:8080",
            "::ffff:1.2.3.4",
            Some(8080),
            "[::ffff:1.2.3.4]:8080",
        ),
        ("[0:0::1]", "0:0::1", None, "[0:0::1]"),
        ("1.2.3.4", "1.2.3.4", None, "1.2.3.4"),
        ("a-.b", "a-.b", None, "a-.b"),
        ("h:00080", "h", Some(80), "h:80"),
        ("a.:1", "a", Some(1), "a:1"),
        ("_-_", "_-_", None, "_-_"),
    ] {
        let a = Authority::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!((a.host.as_str(), a.port), (host, port), "{input:?}");
        assert_eq!(a.to_string(), canon, "{input:?}");
        assert_eq!(Authority::parse(canon).unwrap(), a, "{input:?}");
    }
}

#[test]
fn authority_refuses() {
    for bad in [
        "",
        ".",
        "a..",
        "a.b.:",
        "h:",
        "h:00000",
        "h:000080",
        "[::1]:65536",
        "[::1]]",
        "[::1]:",
        "[1.2.3.4]",
        "[::1%25eth0]",
        "a%2eb",
        "a@b",
        "@",
        "a:b:c",
        "é.com",
        "a b",
        "a\u{a0}b",
        "[v1.x]",
        "1::2",
    ] {
        assert!(Authority::parse(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn authority_name_length_limits() {
    let label = "a".repeat(63);
    let name253 = format!("{label}.{label}.{label}.{}", "a".repeat(61));
    assert_eq!(name253.len(), 253);
    assert_eq!(Authority::parse(&name253).unwrap().host, name253);
    assert_eq!(
        Authority::parse(&format!("{name253}.")).unwrap().host,
        name253
    );
    assert!(Authority::parse(&format!("{name253}a")).is_err());
    assert!(Authority::parse(&format!("{}.com", "a".repeat(64))).is_err());
}

#[test]
fn dns_names_and_tokenizer_urls() {
    assert_eq!(
        check_dns_name(" API.GitHub.com. ").unwrap(),
        "api.github.com"
    );
    for bad in [
        "a-.b",
        "_a.b",
        "1.2.3.4",
        "[::1]",
        "localhost",
        "LOCALHOST.",
        "a..b",
    ] {
        assert!(check_dns_name(bad).is_err(), "{bad:?}");
    }
    let u = parse_tokenizer_url("HtTpS://u:p%40ss@[::1]/").unwrap();
    assert_eq!((u.tls, u.host.as_str(), u.port), (true, "::1", 443));
    assert_eq!(u.display(), "https://[::1]:443");
    assert_eq!(u.userinfo.as_deref().map(|s| s.as_str()), Some("u:p@ss"));
    for bad in [
        "http://",
        "http://u:hunter2@",
        "http://a@b@c:0",
        "http://u:%ff@host",
        "http://h//",
        "http://h#x",
        "ftp://h",
        "http:/h",
    ] {
        let e = parse_tokenizer_url(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad:?}"));
        assert!(!e.contains("hunter2") && !e.contains('"'), "{bad:?}: {e}");
    }
}

// ---------- flysrc::parse (fuzz target `flysrc`) ----------

#[test]
fn flysrc_exactly_four_keys() {
    let s = flysrc::parse("ts=+5;org=;app==x;instance=i").unwrap();
    assert_eq!(
        (s.instance.as_str(), s.app.as_str(), s.org.as_str(), s.ts),
        ("i", "=x", "", 5)
    );
    for bad in [
        "",
        "instance=a;app=b;org=c;ts=1;",
        "instance=a;app=b;org=c;ts=-1",
        "instance=a;app=b;org=c;ts=18446744073709551616",
        "instance=a;app=b;org=c;ts= 1",
        "Instance=a;app=b;org=c;ts=1",
        " instance=a;app=b;org=c;ts=1",
        "instance=a;app=b;org=c;ts=1;app=b",
        "instance=a;app=b;org=c",
    ] {
        let e = flysrc::parse(bad).unwrap_err();
        assert!(e.starts_with("malformed Fly-Src"), "{bad:?}: {e}");
    }
}

// ---------- sealing::TokenizerHeader (fuzz target `tokenizer_header`) ----------

#[test]
fn tokenizer_header_parse_and_round_trip() {
    for (input, sealed, ps, formatted) in [
        ("abc=", "abc=", vec![], "abc="),
        (
            "  abc= ; {\"dst\":\"X\"} ",
            "abc=",
            vec![("dst", "X")],
            "abc=; {\"dst\":\"X\"}",
        ),
        ("abc; {}", "abc", vec![], "abc"),
        (
            "s; {\"k\":\"v;w\"}",
            "s",
            vec![("k", "v;w")],
            "s; {\"k\":\"v;w\"}",
        ),
        (
            "s; {\"a\":\"1\",\"a\":\"2\"}",
            "s",
            vec![("a", "2")],
            "s; {\"a\":\"2\"}",
        ),
        ("\u{a0}s x\u{3000}", "s x", vec![], "s x"),
    ] {
        let h = TokenizerHeader::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(h.sealed, sealed, "{input:?}");
        assert_eq!(h.params, params(&ps), "{input:?}");
        assert_eq!(h.format(), formatted, "{input:?}");
        assert_eq!(TokenizerHeader::parse(formatted).unwrap(), h, "{input:?}");
    }
    for bad in [
        " ; {}",
        ";",
        "",
        "  ",
        "a;b;c",
        "abc; null",
        "abc; {\"k\":1}",
        "abc; {\"k\":\"v\"} x",
    ] {
        assert!(TokenizerHeader::parse(bad).is_err(), "{bad:?}");
    }
    let e = TokenizerHeader::parse("abc; {\"dst\": \"SEKRIT\", \"x\": 12345678}").unwrap_err();
    assert!(!e.contains("12345678") && !e.contains("SEKRIT"), "{e}");
}

// ---------- secret::Secret + processor::plan (fuzz target `secret_json`) ----------

fn check(json: &str) -> Result<proxypilot::secret::Checked, String> {
    Secret::from_json(json.as_bytes())
        .and_then(Secret::check)
        .map_err(|e| e.to_string())
}

fn header(json: &str, p: &Params) -> Result<(String, String), String> {
    match plan(&check(json)?.processor, p).map_err(|e| e.to_string())? {
        Edit::Header { name, value } => Ok((name, value.to_string())),
        _ => Err("not a header edit".into()),
    }
}

#[test]
fn secret_json_answers() {
    let inject = r#"{"inject_processor":{"token":"tok"},"no_auth":{}}"#;
    assert_eq!(
        header(inject, &Params::new()).unwrap(),
        ("Authorization".into(), "Bearer tok".into())
    );
    assert_eq!(
        header(inject, &params(&[("fmt", "%s"), ("dst", "x-api-key")])).unwrap(),
        ("X-Api-Key".into(), "tok".into())
    );
    // null means absent, for known keys and for unknown processor/auth-like keys alike
    assert!(check(
        r#"{"inject_processor":{"token":"t"},"no_auth":{},"bearer_auth":null,"x_auth":null}"#
    )
    .is_ok());
    for (json, expected) in [
        (
            r#"{"inject_processor":{"token":"t"},"no_auth":null}"#,
            "bad secret: expected exactly one auth, found 0",
        ),
        (
            r#"{"no_auth":{}}"#,
            "bad secret: expected exactly one processor, found 0",
        ),
        (
            r#"{"inject_processor":{"token":"t"},"no_auth":{},"allowed_host_pattern":"("}"#,
            "bad secret: allowed_host_pattern is not a valid regex",
        ),
        (
            r#"{"inject_processor":{"token":"t","dst":"proxy-x"},"no_auth":{}}"#,
            "bad secret: dst may not name routing, framing, hop-by-hop or Proxy-* headers",
        ),
        (
            r#"{"x_processor":{},"no_auth":{}}"#,
            "bad secret: processor x_processor is not supported by this tokenizer",
        ),
        ("", "bad secret json: JSON ends early (line 1, column 0)"),
        (
            r#"{"inject_processor":{"token":"SEKRIT"#,
            "bad secret json: JSON ends early (line 1, column 36)",
        ),
        (
            r#"{"inject_processor":{"token":["SEKRIT"]}}"#,
            "bad secret json: a field has the wrong type or value (line 1, column 29)",
        ),
        (
            r#"{"bearer_auth":{"digest":"SEKRIT!!"}}"#,
            "bad secret json: a field has the wrong type or value (line 1, column 36)",
        ),
    ] {
        let e = check(json).err().unwrap_or_else(|| panic!("{json}"));
        assert_eq!(e, expected, "{json}");
    }
    // A known auth next to an unknown one is refused (which message comes first is not fixed).
    assert!(check(r#"{"inject_processor":{"token":"t"},"no_auth":{},"y_auth":{}}"#).is_err());
    // A repeated key is refused, without quoting either value.
    let e = check(r#"{"inject_processor":{"token":"SEKRIT1"},"inject_processor":{"token":"SEKRIT2"},"no_auth":{}}"#)
        .err()
        .unwrap();
    assert!(
        e.starts_with("bad secret json: ") && !e.contains("SEKRIT"),
        "{e}"
    );
    // plan-time refusals
    let hmac = r#"{"inject_hmac_processor":{"key":"","hash":"sha256"},"no_auth":{}}"#;
    assert_eq!(
        header(hmac, &Params::new()).unwrap_err(),
        "bad secret: missing hmac key"
    );
    let hmac = r#"{"inject_hmac_processor":{"key":"a2V5","hash":"SHA256"},"no_auth":{}}"#;
    assert_eq!(
        header(hmac, &Params::new()).unwrap_err(),
        "bad secret: unsupported hash function (only sha256)"
    );
    let hmac = r#"{"inject_hmac_processor":{"key":" a2V5 ","hash":"sha256"},"no_auth":{}}"#;
    let (name, value) = header(hmac, &params(&[("msg", ""), ("fmt", "%X")])).unwrap();
    assert_eq!(name, "Authorization");
    assert_eq!(value.len(), 64, "{value}");
    assert!(value
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
    assert_eq!(
        header(inject, &params(&[("dst", "Transfer-Encoding")])).unwrap_err(),
        "bad dst: a secret may not set routing, framing, hop-by-hop or Proxy-* headers"
    );
    assert_eq!(
        header(inject, &params(&[("fmt", "%s%s")])).unwrap_err(),
        "bad fmt"
    );
    assert_eq!(
        header(r#"{"inject_processor":{},"no_auth":{}}"#, &Params::new()).unwrap_err(),
        "bad secret: missing token"
    );
}

#[test]
fn body_placeholder_defaults_and_streaming() {
    // An empty placeholder (secret or param) means the default one.
    let c =
        check(r#"{"inject_body_processor":{"token":"T","placeholder":""},"no_auth":{}}"#).unwrap();
    assert!(matches!(c.processor, Processor::Body(_)));
    let Ok(Edit::Body(mut r)) = plan(&c.processor, &params(&[("placeholder", "")])) else {
        panic!("body edit")
    };
    let body = format!("a{DEFAULT_PLACEHOLDER}{DEFAULT_PLACEHOLDER}b{{{{ACCESS");
    let mut out = Vec::new();
    for piece in body.as_bytes().chunks(3) {
        out.extend(r.feed(piece, false));
    }
    out.extend(r.feed(b"", true));
    assert_eq!(out, b"aTTb{{ACCESS");
    // Overlapping candidates: the leftmost match wins, as a plain replace does.
    let mut r = StreamReplace::new(b"aab", b"X");
    let mut out = r.feed(b"aa", false);
    out.extend(r.feed(b"aab", false));
    out.extend(r.feed(b"", true));
    assert_eq!(out, b"aaX");
}

// ---------- secret::FmtDst (fuzz target `fmt`) ----------

#[test]
fn fmt_and_dst_answers() {
    let any = FmtDst::default();
    for (f, arg, expected) in [
        ("%s\u{10FFFF}", FmtArg::Str("t"), Some("t\u{10FFFF}")),
        ("é%sé", FmtArg::Str("%s"), Some("é%sé")),
        ("%x", FmtArg::Bin(b""), Some("")),
        ("%X-", FmtArg::Bin(b"\xff\x00"), Some("FF00-")),
        ("%", FmtArg::Str("t"), None),
        ("%é", FmtArg::Str("t"), None),
        ("%S", FmtArg::Str("t"), None),
        ("%x", FmtArg::Str("t"), None),
        ("%s", FmtArg::Bin(b"t"), None),
        ("%s%", FmtArg::Str("t"), None),
    ] {
        let got = any.apply_fmt(&params(&[("fmt", f)]), arg).ok();
        assert_eq!(got.as_deref(), expected, "{f:?}");
    }
    // A fixed fmt wins over an allowed list when no param is given, and must still be allowed.
    let fd = FmtDst {
        fmt: "T %s".into(),
        allowed_fmt: Some(vec!["Bearer %s".into()]),
        ..Default::default()
    };
    assert!(fd.apply_fmt(&Params::new(), FmtArg::Str("t")).is_err());
    let fd = FmtDst {
        dst: "x-a".into(),
        allowed_dst: Some(vec!["X-B".into()]),
        ..Default::default()
    };
    assert!(fd.choose_dst(&params(&[("dst", "X-A")])).is_err());
    for (d, expected) in [
        ("x-api-key", Some("X-Api-Key")),
        ("x--y", Some("X--Y")),
        ("X_UNDER", Some("X_under")),
        ("Proxy-", None),
        ("PROXY-Authorization", None),
        ("te", None),
        ("X-A\r\n", None),
        ("X-é", None),
        ("", None),
        ("a b", None),
    ] {
        let got = any.choose_dst(&params(&[("dst", d)])).ok();
        assert_eq!(got.as_deref(), expected, "{d:?}");
    }
    assert_eq!(canonical_header_name("x-ÿ-a"), "X-ÿ-A");
}

// ---------- config::from_yaml (fuzz target `config_yaml`) ----------

const SEALED: &str = "IQ4cJ7Xk3f2SlhOEoYxZBsR1ZlSMkgZ4Cy2RJRHJ/VTjHjChQIIo+Nh71acWsORQuUZANtpZXIWZ/0Ork9k4jQoSNoRWyUk6tSB0ACvxYlWQ5LvFPDJTkBNrzqcG++XWiIE5iY9AEjKPDvs=";

/// The environment the configs below read (no test touches the process environment).
fn env(name: &str) -> Option<String> {
    match name {
        "PP_REG_SEALED" => Some(SEALED.to_string()),
        "PP_REG_AUTH" => Some("hunter2-password".to_string()),
        "PP_REG_RAW" => Some("ghp_realtoken_not_sealed".to_string()),
        _ => None,
    }
}

fn yaml(tokenizer_extra: &str, routes: &str) -> String {
    format!(
        "proxypilot:\n  listen: [\"127.0.0.1:8443\"]\n  tokenizer:\n    url: http://127.0.0.1:8080\n{tokenizer_extra}  routes:\n{routes}"
    )
}

const ROUTE: &str = "    - host: api.github.com\n      secret_env: PP_REG_SEALED\n";

#[test]
fn config_accepts() {
    let c = from_yaml(
        &yaml(
            "",
            "    - host: API.GitHub.com.\n      secret_env: PP_REG_SEALED\n      params: {dst: X-Api-Key, fmt: \"token %s\"}\n",
        ),
        "r.yaml", &env,
    )
    .unwrap();
    let r = &c.routes["api.github.com"];
    assert_eq!(
        r.proxy_tokenizer.to_str().unwrap(),
        format!("{SEALED}; {{\"dst\":\"X-Api-Key\",\"fmt\":\"token %s\"}}")
    );
    // YAML anchors and other top-level keys (pingora's) are fine.
    let c = from_yaml(
        "x: &t {url: \"http://[::1]:9\"}\nproxypilot:\n  tokenizer: *t\n  routes: [{host: b.example, secret_env: PP_REG_SEALED}]\n",
        "r.yaml", &env,
    );
    let c = c.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.tokenizer.url, "http://[::1]:9");
    assert_eq!(c.listen, vec!["127.0.0.1:443", "[::1]:443"]);
}

#[test]
fn config_errors_name_the_file_and_key() {
    for (text, expected) in [
        (String::new(), "r.yaml: proxypilot: missing section (listen, tokenizer, routes)"),
        ("proxypilot:".into(), "r.yaml: proxypilot: missing section (listen, tokenizer, routes)"),
        (yaml("", "").replace("  routes:\n", "  routes: []\n"), "r.yaml: proxypilot.routes: needs at least one route"),
        (yaml("    spares: 65\n", ROUTE), "r.yaml: proxypilot.tokenizer.spares: at most 64"),
        (yaml("", ROUTE).replace("  tokenizer:", "  max_connections: 0\n  tokenizer:"), "r.yaml: proxypilot.max_connections: must be at least 1"),
        (yaml("", ROUTE).replace("  tokenizer:", "  read_timeout: 0s\n  tokenizer:"), "r.yaml: proxypilot.read_timeout: must be more than zero"),
        (yaml("", ROUTE).replace("  tokenizer:", "  listen: []\n  tokenizer:").replace("  listen: [\"127.0.0.1:8443\"]\n", ""), "r.yaml: proxypilot.listen: needs at least one address"),
        (yaml("", &format!("{ROUTE}    - host: API.github.com.\n      secret_env: PP_REG_SEALED\n")), "r.yaml: proxypilot.routes[1].host: api.github.com is routed twice"),
        (yaml("", &format!("{ROUTE}      params: {{bogus: x}}\n")), "r.yaml: proxypilot.routes[0].params: unknown param \"bogus\" (known: dst, fmt, msg, placeholder)"),
        (yaml("", &format!("{ROUTE}      strip_headers: [\"a b\"]\n")), "r.yaml: proxypilot.routes[0].strip_headers: \"a b\" is not a header name"),
        (yaml("", "    - host: a.example\n      secret_file: /nonexistent/x\n"), "r.yaml: proxypilot.routes[0]: reading /nonexistent/x: No such file or directory (os error 2)"),
        (yaml("", "    - host: a.example\n      secret_env: PP_REG_SEALED\n      secret_file: /x\n"), "r.yaml: proxypilot.routes[0]: give secret_env or secret_file, not both"),
        (yaml("", "    - host: a.example\n"), "r.yaml: proxypilot.routes[0]: missing secret_env (or secret_file)"),
        (yaml("", "    - host: a.example\n      secret_env: PP_REG_RAW\n"), "r.yaml: proxypilot.routes[0]: environment variable PP_REG_RAW does not look like a sealed secret (base64 of a sealed box); seal the real token with `proxypilot seal` and put the output there"),
        (yaml("", "    - host: a.example\n      secret_env: \"A=B\\0\"\n"), "r.yaml: proxypilot.routes[0]: environment variable A=B\0 is not set"),
        (yaml("    auth_env: PP_REG_AUTH\n    auth_file: /x\n", ROUTE), "r.yaml: proxypilot.tokenizer: give auth_env or auth_file, not both"),
        (yaml("", ROUTE).replace("http://127.0.0.1:8080", "http://me:hunter2@127.0.0.1:8080"), "r.yaml: proxypilot.tokenizer.url: has a user:password; put the password in auth_env or auth_file instead, so the config file holds no credential"),
        (yaml("", ROUTE).replace("http://127.0.0.1:8080", "http://127.0.0.1:0"), "r.yaml: proxypilot.tokenizer.url: the URL's host: bad port: not a number from 1 to 65535"),
    ] {
        let e = from_yaml(&text, "r.yaml", &env).err().unwrap_or_else(|| panic!("{text}"));
        assert_eq!(e, expected, "{text}");
    }
    // Errors that depend on the YAML library's wording: the file name first, no secret value.
    for text in [
        "proxypilot: [",
        "proxypilot: {tokenizer: {url: 1}, routes: [], extra: 1}",
        "\u{feff}proxypilot: !!binary aGk=",
        &yaml("", ROUTE).replace(
            "  tokenizer:",
            "  read_timeout: 18446744073709551615d\n  tokenizer:",
        ),
        &yaml("", ROUTE).replace("  tokenizer:", "  max_connections: -1\n  tokenizer:"),
    ] {
        let e = from_yaml(text, "r.yaml", &env)
            .err()
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            e.starts_with("r.yaml: ") && !e.contains("hunter2") && !e.contains(SEALED),
            "{e}"
        );
    }
}

/// Found by reading the config_yaml target's invariant "a config that loads yields
/// Proxy-Tokenizer values our tokenizer accepts": route params are serialized as raw UTF-8,
/// `HeaderValue::from_str` takes bytes >= 0x80 (obs-text), so the config loads, but the
/// tokenizer reads the header with `to_str()` (visible ASCII only) and answers every request
/// on that route 400 "bad tokenizer header".
#[test]
fn config_params_non_ascii() {
    let text = yaml(
        "",
        &format!("{ROUTE}      params: {{fmt: \"Bearer %s \\u00e9\"}}\n"),
    );
    match from_yaml(&text, "r.yaml", &env) {
        // Either refused at load, naming the route ...
        Err(e) => assert!(e.starts_with("r.yaml: proxypilot.routes[0]"), "{e}"),
        // ... or sent in a form the tokenizer reads (JSON \u escapes).
        Ok(c) => {
            let v = c.routes["api.github.com"].proxy_tokenizer.to_str();
            assert!(v.is_ok(), "Proxy-Tokenizer is not visible ASCII");
            let h = TokenizerHeader::parse(v.unwrap()).unwrap();
            assert_eq!(h.params["fmt"], "Bearer %s \u{e9}");
        }
    }
}

// ---------- policy::Policy (fuzz target `policy`) ----------

/// The seeds under fuzz/seeds/policy, each held to its answer: rule, method, path, body ->
/// allowed, or the status refused with.
#[test]
fn policy_seeds() {
    use proxypilot::policy::Policy;
    let deep = format!("{{\"query\":\"{}{}\"}}", "{ a ".repeat(80), "}".repeat(80));
    for (rule, method, path, body, want) in [
        ("GET,HEAD /repos/**", "GET", "/repos/o/r", None, Ok(())),
        (
            "* /repos/*/secret/**",
            "GET",
            "/repos/o/x/%2e%2E/secret",
            None,
            Err(400),
        ),
        ("DELETE /Repos/*/R", "delete", "/REPOS/O/r/", None, Ok(())),
        ("GET /v1*/mod*ls", "GET", "/v1beta/models", None, Ok(())),
        ("GET /a/**", "GET", "/a%2Fb/../c", None, Err(400)),
        (
            "POST /graphql query",
            "POST",
            "/graphql",
            Some(r#"{"query":"query A { a } mutation B { b }"}"#),
            Err(403),
        ),
        (
            "POST /graphql query,mutation",
            "POST",
            "/graphql",
            Some(r#"[{"query":"{ a }"},{"query":"subscription { s }"}]"#),
            Err(403),
        ),
        (
            "POST /graphql query",
            "POST",
            "/graphql",
            Some(deep.as_str()),
            Err(403),
        ),
    ] {
        let p = Policy::parse(&[rule.to_string()], &[]).unwrap();
        let got = p
            .check(method, path, body.map(str::as_bytes))
            .map_err(|r| r.status);
        assert_eq!(got, want, "{rule:?} {method} {path:?}");
    }
}
