//! Who may use a secret: the tokenizer's checks of `no_auth`, `bearer_auth` and `fly_src_auth`.
//!
//! Owns: extracting candidate passwords from `Proxy-Authorization` values (Bearer, FlyV1, Basic,
//! each also tried URL-unescaped), the constant-time digest comparison, and matching a verified
//! Fly-Src against a secret's org/app/instance lists.
//! Must not: say in an error which part of a credential was wrong, or echo it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::flysrc::FlySrc;
use crate::secret::{Auth, SecretError};

/// What a request offers to prove it may use a secret.
pub struct Credentials<'a> {
    /// Every `Proxy-Authorization` value on the request.
    pub proxy_authorization: Vec<&'a [u8]>,
    /// The Fly-Src, if one was present, came from a trusted network and verified.
    pub fly_src: Option<&'a FlySrc>,
    /// Why a Fly-Src that was present did not verify (for a precise 407 reason).
    pub fly_src_error: Option<&'a str>,
}

fn denied(msg: &str) -> SecretError {
    SecretError::NotAuthorized(format!("unauthorized to use secret: {msg}"))
}

/// Candidate passwords carried by one `Proxy-Authorization` value.
fn candidates(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out = Vec::new();
    let text = match std::str::from_utf8(value) {
        Ok(t) => t.trim(),
        Err(_) => return out,
    };
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim();
    let token: Option<Zeroizing<Vec<u8>>> =
        if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("flyv1") {
            Some(Zeroizing::new(rest.as_bytes().to_vec()))
        } else if scheme.eq_ignore_ascii_case("basic") {
            B64.decode(rest).ok().and_then(|raw| {
                let raw = Zeroizing::new(raw);
                raw.iter()
                    .position(|&b| b == b':')
                    .map(|i| Zeroizing::new(raw[i + 1..].to_vec()))
            })
        } else {
            None
        };
    if let Some(t) = token {
        let unescaped: Vec<u8> = percent_encoding::percent_decode(&t).collect();
        if unescaped != t[..] {
            out.push(Zeroizing::new(unescaped));
        }
        out.push(t);
    }
    out
}

/// Check the secret's auth against what the request offers.
pub fn authorize(auth: &Auth, creds: &Credentials<'_>) -> Result<(), SecretError> {
    match auth {
        Auth::None => Ok(()),
        Auth::Bearer(b) => {
            if b.digest.0.len() != 32 {
                return Err(SecretError::BadRequest(
                    "bad secret: bearer_auth digest must be a base64 sha256".into(),
                ));
            }
            let mut ok = subtle::Choice::from(0u8);
            for value in &creds.proxy_authorization {
                for cand in candidates(value) {
                    let d = Sha256::digest(&cand[..]);
                    ok |= d.as_slice().ct_eq(&b.digest.0[..]);
                }
            }
            if bool::from(ok) {
                Ok(())
            } else if creds.proxy_authorization.is_empty() {
                Err(denied("missing Proxy-Authorization"))
            } else {
                Err(denied("bad Proxy-Authorization"))
            }
        }
        Auth::FlySrc(a) => {
            let src = match creds.fly_src {
                Some(s) => s,
                None => {
                    return Err(denied(creds.fly_src_error.unwrap_or("no trusted Fly-Src")));
                }
            };
            let allowed =
                |list: &Vec<String>, v: &str| list.is_empty() || list.iter().any(|x| x == v);
            if !allowed(&a.allowed_orgs, &src.org) {
                return Err(denied("Fly-Src org not allowed"));
            }
            if !allowed(&a.allowed_apps, &src.app) {
                return Err(denied("Fly-Src app not allowed"));
            }
            if !allowed(&a.allowed_instances, &src.instance) {
                return Err(denied("Fly-Src instance not allowed"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{B64Bytes, BearerAuth, FlySrcAuth};

    fn bearer() -> Auth {
        // sha256("trustno1"), as in the vectors file
        let d = B64
            .decode("IDtwta6IOTIWG70L3tk1fnY+Y6/OmLFiML4z8LlMLMU=")
            .unwrap();
        Auth::Bearer(BearerAuth {
            digest: B64Bytes(Zeroizing::new(d)),
        })
    }

    fn creds(values: &[&'static str]) -> Credentials<'static> {
        Credentials {
            proxy_authorization: values.iter().map(|v| v.as_bytes()).collect(),
            fly_src: None,
            fly_src_error: None,
        }
    }

    #[test]
    fn bearer_forms() {
        let a = bearer();
        assert!(authorize(&a, &creds(&["Bearer trustno1"])).is_ok());
        assert!(authorize(&a, &creds(&["FlyV1 trustno1"])).is_ok());
        let basic = format!("Basic {}", B64.encode("user:trustno1"));
        let basic: &'static str = Box::leak(basic.into_boxed_str());
        assert!(authorize(&a, &creds(&[basic])).is_ok());
        // URL-escaped variant
        assert!(authorize(&a, &creds(&["Bearer trust%6Eo1"])).is_ok());
        // one good value among several
        assert!(authorize(&a, &creds(&["Bearer nope", "Bearer trustno1"])).is_ok());
        let wrong_pw: &'static str =
            Box::leak(format!("Basic {}", B64.encode("user:nope")).into_boxed_str());
        for bad in [&["Bearer nope"][..], &[wrong_pw], &["Token trustno1"], &[]] {
            let e = authorize(&a, &creds(bad)).unwrap_err();
            assert!(matches!(e, SecretError::NotAuthorized(_)), "{bad:?}");
            assert!(!e.to_string().contains("trustno1"));
        }
    }

    #[test]
    fn fly_src_lists() {
        let src = FlySrc {
            instance: "m1".into(),
            app: "proxypilot".into(),
            org: "personal".into(),
            ts: 0,
        };
        let auth = |o: &[&str], a: &[&str], i: &[&str]| {
            Auth::FlySrc(FlySrcAuth {
                allowed_orgs: o.iter().map(|s| s.to_string()).collect(),
                allowed_apps: a.iter().map(|s| s.to_string()).collect(),
                allowed_instances: i.iter().map(|s| s.to_string()).collect(),
            })
        };
        let with = Credentials {
            proxy_authorization: vec![],
            fly_src: Some(&src),
            fly_src_error: None,
        };
        assert!(authorize(&auth(&["personal"], &["proxypilot"], &[]), &with).is_ok());
        assert!(authorize(&auth(&[], &[], &["m1"]), &with).is_ok());
        assert!(authorize(&auth(&["other"], &[], &[]), &with).is_err());
        assert!(authorize(&auth(&[], &["other"], &[]), &with).is_err());
        assert!(authorize(&auth(&[], &[], &["m2"]), &with).is_err());
        let without = Credentials {
            proxy_authorization: vec![],
            fly_src: None,
            fly_src_error: Some("Fly-Src is stale (31 s old)"),
        };
        let e = authorize(&auth(&[], &[], &[]), &without).unwrap_err();
        assert!(e.to_string().contains("stale"), "{e}");
    }
}
