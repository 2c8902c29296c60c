//! The tokenizer's configuration: raw options (flags and the reference's environment names)
//! turned once into runtime [`Settings`].
//!
//! Owns: validating every option (listen address, header names, Fly-Src key and networks,
//! `--connect-to` pins, extra upstream CAs, durations) with a message naming the option.
//! Must not: print the open key, or read the environment on the request path.

use ipnet::IpNet;
use openssl::x509::X509;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::flysrc::Verifier25519;
use crate::resolve::ConnectTo;
use crate::sealing::OpenKey;
use crate::trust;

/// Runtime settings, validated once at start.
pub struct Settings {
    pub open_key: OpenKey,
    pub listen: Vec<String>,
    /// Extra headers removed from every request (lower case), beyond Proxy-Tokenizer and
    /// Proxy-Authorization.
    pub filtered_headers: Vec<String>,
    pub open_proxy: bool,
    pub require_fly_src: bool,
    pub fly_src: Option<Verifier25519>,
    /// Names and addresses of this tokenizer; origin-form requests for them are circular.
    pub hostnames: Vec<String>,
    pub connect_to: Vec<ConnectTo>,
    /// Roots trusted for upstream TLS: the system store plus any `--upstream-ca`.
    pub upstream_roots: Arc<Box<[X509]>>,
    pub read_timeout: Duration,
    /// Close the client connection after every response, like the reference tokenizer.
    pub close_connections: bool,
    pub threads: usize,
}

/// The options as given (flags or the reference's environment variables).
pub struct Raw {
    pub open_key: OpenKey,
    pub listen: String,
    pub filtered_headers: Vec<String>,
    pub open_proxy: bool,
    pub use_fly_src: bool,
    pub require_fly_src: bool,
    pub hostnames: Vec<String>,
    pub fly_src_pubkey: PathBuf,
    pub fly_src_trusted_net: Vec<String>,
    pub upstream_ca: Vec<PathBuf>,
    pub connect_to: Vec<String>,
    pub read_timeout: String,
    pub threads: usize,
    pub close_connections: bool,
}

impl Settings {
    /// Validate `raw` into runtime settings; the error names the option.
    pub fn from_raw(raw: Raw) -> Result<Settings, String> {
        let fly_src = if raw.use_fly_src || raw.require_fly_src {
            let key = std::fs::read_to_string(&raw.fly_src_pubkey).map_err(|e| {
                format!(
                    "--use-fly-src: reading {}: {e}",
                    raw.fly_src_pubkey.display()
                )
            })?;
            let nets = parse_nets(&raw.fly_src_trusted_net)
                .map_err(|e| format!("--fly-src-trusted-net: {e}"))?;
            Some(
                Verifier25519::new(&key, nets)
                    .map_err(|e| format!("{}: {e}", raw.fly_src_pubkey.display()))?,
            )
        } else {
            None
        };
        let connect_to = raw
            .connect_to
            .iter()
            .map(|c| c.parse())
            .collect::<Result<Vec<_>, _>>()?;
        let filtered_headers = raw
            .filtered_headers
            .iter()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .map(|h| {
                http::HeaderName::from_bytes(h.as_bytes())
                    .map(|n| n.as_str().to_string())
                    .map_err(|_| format!("FILTERED_HEADERS: {h:?} is not a header name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut extra = Vec::new();
        for path in &raw.upstream_ca {
            extra.extend(trust::ca_file(path).map_err(|e| format!("--upstream-ca {e}"))?);
        }
        let read_timeout = crate::timeouts::parse_duration(&raw.read_timeout)
            .map_err(|e| format!("--read-timeout: {e}"))?;
        Ok(Settings {
            open_key: raw.open_key,
            listen: vec![normalize_listen(&raw.listen)?],
            filtered_headers,
            open_proxy: raw.open_proxy,
            require_fly_src: raw.require_fly_src,
            fly_src,
            hostnames: raw
                .hostnames
                .iter()
                .map(|h| crate::host::normalize(h.trim()))
                .filter(|h| !h.is_empty())
                .collect(),
            connect_to,
            upstream_roots: Arc::new(trust::upstream_roots(&extra).into_boxed_slice()),
            read_timeout,
            close_connections: raw.close_connections,
            threads: raw.threads,
        })
    }
}

/// Accept Go-style `:8080` as well as `host:port`.
pub fn normalize_listen(addr: &str) -> Result<String, String> {
    let a = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    a.parse::<std::net::SocketAddr>()
        .map_err(|_| format!("LISTEN_ADDRESS {addr:?} is not an address like 0.0.0.0:8080"))?;
    Ok(a)
}

/// Parse `--fly-src-trusted-net` values.
pub fn parse_nets(values: &[String]) -> Result<Vec<IpNet>, String> {
    values
        .iter()
        .map(|v| {
            v.parse::<IpNet>()
                .map_err(|_| format!("{v:?} is not a CIDR network (like 172.16.0.0/16)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> Raw {
        Raw {
            open_key: OpenKey::generate(),
            listen: ":8080".into(),
            filtered_headers: vec!["X-Internal".into(), " ".into()],
            open_proxy: false,
            use_fly_src: false,
            require_fly_src: false,
            hostnames: vec!["Tokenizer.Internal.".into(), "".into()],
            fly_src_pubkey: "/nonexistent/fly-src.pub".into(),
            fly_src_trusted_net: vec!["172.16.0.0/16".into()],
            upstream_ca: vec![],
            connect_to: vec!["api.github.com:443:127.0.0.1:8443".into()],
            read_timeout: "10m".into(),
            threads: 2,
            close_connections: false,
        }
    }

    #[test]
    fn raw_options_become_settings() {
        let s = Settings::from_raw(raw()).unwrap();
        assert_eq!(s.listen, vec!["0.0.0.0:8080"]);
        assert_eq!(s.filtered_headers, vec!["x-internal"]);
        assert_eq!(s.hostnames, vec!["tokenizer.internal"]);
        assert_eq!(s.read_timeout, Duration::from_secs(600));
        assert!(s.fly_src.is_none());
    }

    #[test]
    fn each_bad_option_is_named() {
        type Change = Box<dyn Fn(&mut Raw)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|r| r.listen = "nope".into()), "LISTEN_ADDRESS"),
            (
                Box::new(|r| r.filtered_headers = vec!["bad header".into()]),
                "FILTERED_HEADERS",
            ),
            (
                Box::new(|r| r.connect_to = vec!["nonsense".into()]),
                "--connect-to",
            ),
            (
                Box::new(|r| r.read_timeout = "soon".into()),
                "--read-timeout",
            ),
            (
                Box::new(|r| r.upstream_ca = vec!["/nonexistent/ca.pem".into()]),
                "--upstream-ca",
            ),
            (
                Box::new(|r| r.require_fly_src = true),
                "/nonexistent/fly-src.pub",
            ),
        ];
        for (change, named) in cases {
            let mut r = raw();
            change(&mut r);
            let e = Settings::from_raw(r).err().expect("refused");
            assert!(e.contains(named), "{named}: {e}");
        }
        assert!(parse_nets(&["10.0.0.0/8".into()]).is_ok());
        assert!(parse_nets(&["10.0.0.0".into()]).is_err());
    }
}
