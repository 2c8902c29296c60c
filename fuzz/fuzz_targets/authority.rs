//! `host::Authority::parse`: the one place where a client's text becomes a host and port.
//! Also drives `host::check_dns_name` and `config::parse_tokenizer_url`, which build on it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxypilot::sidecar::config::parse_tokenizer_url;
use proxypilot::host::{check_dns_name, Authority};
use std::net::Ipv6Addr;

fn host_is_canonical(host: &str) -> bool {
    if host.contains(':') {
        return host.parse::<Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(a) = Authority::parse(s) {
        assert!(
            !s.contains('@') && !s.contains('%') && !s.chars().any(char::is_whitespace),
            "accepted {s:?} with userinfo, percent-encoding or whitespace"
        );
        assert!(host_is_canonical(&a.host), "{s:?} gave host {:?}", a.host);
        assert_ne!(a.port, Some(0), "{s:?} gave port 0");
        let text = a.to_string();
        let again = Authority::parse(&text)
            .unwrap_or_else(|e| panic!("{s:?} -> {text:?} does not parse again: {e}"));
        assert_eq!(again, a, "{s:?} -> {text:?} does not round trip");
        assert_eq!(again.to_string(), text);
    }

    if let Ok(h) = check_dns_name(s) {
        // A configured DNS name is a host the strict parser accepts unchanged, with no port.
        let a = Authority::parse(&h).unwrap_or_else(|e| panic!("dns name {h:?}: {e}"));
        assert_eq!((a.host.as_str(), a.port), (h.as_str(), None), "{s:?}");
        assert!(
            !a.is_v6() && h.parse::<std::net::IpAddr>().is_err(),
            "{s:?}"
        );
    }

    match parse_tokenizer_url(s) {
        Ok(u) => {
            // The display form (what logs show) is a URL that parses back to the same place
            // and never carries the user:password.
            let shown = u.display();
            let again = parse_tokenizer_url(&shown)
                .unwrap_or_else(|e| panic!("{s:?} -> {shown:?} does not parse again: {e}"));
            assert_eq!(
                (again.tls, &again.host, again.port),
                (u.tls, &u.host, u.port),
                "{s:?}"
            );
            assert!(
                again.userinfo.is_none() && !shown.contains('@'),
                "{shown:?}"
            );
        }
        Err(e) => {
            // Errors never quote the URL, which may hold a password: they are fixed texts
            // (no quoting, no '@'), whatever the input.
            assert!(
                [
                    "not a URL like http://tokenizer.flycast (scheme must be http or https)",
                    "a tokenizer URL has no path, query or fragment",
                    "the URL's user:password is not UTF-8",
                ]
                .contains(&e.as_str())
                    || e.starts_with("the URL's host: "),
                "{s:?}: {e}"
            );
            assert!(!e.contains('"') && !e.contains('@'), "{s:?}: {e}");
        }
    }
});
