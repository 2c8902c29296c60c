//! `config::from_yaml`: the sidecar's YAML config.
//!
//! Environment set once: `PP_FUZZ_SEALED` (a sealed-looking value), `PP_FUZZ_RAW` (a raw token,
//! which must be refused) and `PP_FUZZ_AUTH` (a tokenizer password).
//! Invariants: never panics; every error starts with `fuzz.yaml: `; no error quotes the value
//! of an environment variable (unless the YAML itself holds that text).
//! The config may name files (`secret_file`, `auth_file`, `tokenizer.ca`), which are read:
//! inputs naming a device, /proc, /sys or a large file are skipped so a run cannot block or
//! exhaust memory on `/dev/zero`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Once;

const SEALED: &str = "IQ4cJ7Xk3f2SlhOEoYxZBsR1ZlSMkgZ4Cy2RJRHJ/VTjHjChQIIo+Nh71acWsORQuUZANtpZXIWZ/0Ork9k4jQoSNoRWyUk6tSB0ACvxYlWQ5LvFPDJTkBNrzqcG++XWiIE5iY9AEjKPDvs=";
const RAW: &str = "ghp_RAWTOKENNOTSEALED";
const AUTH: &str = "AUTHPASSWORD";

static ENV: Once = Once::new();

/// A config that loads must yield Proxy-Tokenizer values our tokenizer accepts (it reads them
/// with `HeaderValue::to_str`, visible ASCII only). This found route params with non-ASCII text
/// (see `config_params_non_ascii` in tests/fuzz_regressions.rs), now sent as JSON escapes.
const CHECK_ASCII_HEADER: bool = true;

/// Every scalar (keys too) that could name a file.
fn scalars(v: &serde_yaml::Value, out: &mut Vec<String>) {
    use serde_yaml::Value as V;
    match v {
        V::String(s) => out.push(s.clone()),
        V::Number(n) => out.push(n.to_string()),
        V::Bool(b) => out.push(b.to_string()),
        V::Sequence(s) => s.iter().for_each(|x| scalars(x, out)),
        V::Mapping(m) => m.iter().for_each(|(k, x)| {
            scalars(k, out);
            scalars(x, out);
        }),
        V::Tagged(t) => scalars(&t.value, out),
        V::Null => {}
    }
}

/// Is `p` a path whose reading could block or never end?
fn risky_path(p: &str) -> bool {
    let Ok(real) = std::fs::canonicalize(p.trim()) else {
        return false;
    };
    if ["/proc", "/sys", "/dev", "/run"]
        .iter()
        .any(|d| real.starts_with(d))
    {
        return true;
    }
    match std::fs::metadata(&real) {
        Ok(m) => !(m.is_dir() || (m.is_file() && m.len() <= 1 << 20)),
        Err(_) => true,
    }
}

fuzz_target!(|data: &[u8]| {
    ENV.call_once(|| {
        std::env::set_var("PP_FUZZ_SEALED", SEALED);
        std::env::set_var("PP_FUZZ_RAW", RAW);
        std::env::set_var("PP_FUZZ_AUTH", AUTH);
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        let mut all = Vec::new();
        scalars(&v, &mut all);
        if all.iter().any(|s| risky_path(s)) {
            return;
        }
    }
    match proxypilot::sidecar::config::from_yaml(text, "fuzz.yaml", &proxypilot::sidecar::config::process_env) {
        Err(e) => {
            assert!(e.starts_with("fuzz.yaml: "), "{e:?}");
            for secret in [SEALED, RAW, AUTH] {
                // Any 8-byte piece of a value that is not in the YAML itself.
                let leaked = secret
                    .as_bytes()
                    .windows(8)
                    .map(|w| std::str::from_utf8(w).unwrap())
                    .find(|w| e.contains(w) && !text.contains(w));
                assert!(leaked.is_none(), "{e:?} quotes {leaked:?} of an env value");
            }
        }
        Ok(c) => {
            assert!(!c.routes.is_empty() && !c.listen.is_empty());
            for (host, r) in &c.routes {
                assert_eq!(proxypilot::host::check_dns_name(host).as_ref(), Ok(host));
                assert!(r.proxy_tokenizer.is_sensitive(), "{host}");
                assert!(!format!("{r:?}").contains(SEALED), "{host}");
                let v = std::str::from_utf8(r.proxy_tokenizer.as_bytes()).expect("UTF-8 value");
                let h = proxypilot::sealing::TokenizerHeader::parse(v).expect("parses back");
                assert!(!h.sealed.is_empty() && !h.sealed.contains(char::is_whitespace));
                if CHECK_ASCII_HEADER {
                    assert!(
                        r.proxy_tokenizer.to_str().is_ok(),
                        "{host}: Proxy-Tokenizer is not visible ASCII; the tokenizer refuses it"
                    );
                }
            }
            assert!(!c.tokenizer.url.contains('@'), "{}", c.tokenizer.url);
        }
    }
});
