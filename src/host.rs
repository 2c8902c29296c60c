//! Host names and authorities: the one place where a string a client sent becomes a host.
//!
//! Owns: strict parsing of an authority (`host`, `host:port`, `[v6]`, `[v6]:port`) into a
//! normalized host and a port that is a valid non-zero `u16` or absent, normalizing names
//! (lower case, one trailing dot dropped), checking configured DNS names, and the canonical
//! text form of an authority. Every comparison of a host with another (SNI pinning, secret
//! validators, name constraints, routes) goes through the values made here, so what is
//! compared is exactly what is dialled.
//! Must not: accept anything it cannot say precisely which host and port it means: userinfo,
//! percent-encoding, whitespace, a non-numeric or out-of-range port, an unbracketed IPv6
//! address, an IPv6 zone, empty labels.

use std::fmt;
use std::net::Ipv6Addr;

/// A parsed authority. `host` is lower case, without brackets or a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: String,
    pub port: Option<u16>,
}

/// Why an authority was refused. The text never quotes the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError(pub &'static str);

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Longest DNS name (RFC 1035), in text form without the trailing dot.
const MAX_NAME: usize = 253;

/// Lower-case a name and drop one trailing dot (`API.GitHub.com.` → `api.github.com`).
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Is `h` (already normalized) a valid host as we accept it on the wire: a name made of
/// letters, digits, `-`, `_` and dots with no empty label (IPv4 literals are names of digits),
/// at most 253 characters, or an IPv6 address (without brackets, no zone)?
fn valid_host(h: &str) -> bool {
    if h.contains(':') {
        return h.parse::<Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.len() <= MAX_NAME
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A port: 1 to 5 ASCII digits, 1..=65535.
fn parse_port(p: &str) -> Result<u16, HostError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError("bad port: not a number from 1 to 65535"));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(HostError("bad port: not a number from 1 to 65535")),
        Ok(n) => Ok(n),
    }
}

impl Authority {
    /// Parse an authority strictly. See the module comment for what is refused.
    pub fn parse(s: &str) -> Result<Authority, HostError> {
        if s.is_empty() {
            return Err(HostError("empty host"));
        }
        if s.contains('@') {
            return Err(HostError("bad host: userinfo is not allowed"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(HostError("bad host: unexpected characters"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or(HostError("bad host: unclosed IPv6 bracket"))?;
            if v6.parse::<Ipv6Addr>().is_err() {
                return Err(HostError("bad host: not an IPv6 address in brackets"));
            }
            let port = match after {
                "" => None,
                p => Some(parse_port(
                    p.strip_prefix(':')
                        .ok_or(HostError("bad host: text after the IPv6 address"))?,
                )?),
            };
            (v6.to_ascii_lowercase(), port)
        } else {
            let (h, port) = match s.split_once(':') {
                None => (s, None),
                Some((h, p)) => (h, Some(parse_port(p)?)),
            };
            let h = normalize(h);
            if !valid_host(&h) || h.contains(':') {
                return Err(HostError("bad host: not a host name or IP address"));
            }
            (h, port)
        };
        Ok(Authority { host, port })
    }

    /// Whether the host is an IPv6 literal (shown in brackets in an authority).
    pub fn is_v6(&self) -> bool {
        self.host.contains(':')
    }

    /// The host as it appears in an authority: IPv6 in brackets.
    pub fn host_text(&self) -> String {
        if self.is_v6() {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host_text())?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// A DNS host name for a route or a sealed secret: lower case, no port, no trailing dot, not
/// an IP address, not `localhost` (reserved for the sidecar's own answers).
pub fn check_dns_name(h: &str) -> Result<String, String> {
    let host = normalize(h.trim());
    let all_labels_dns = host
        .split('.')
        .all(|l| !l.starts_with('-') && !l.ends_with('-') && !l.bytes().any(|b| b == b'_'));
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    if !valid_host(&host) || host.contains(':') || !all_labels_dns || is_ip {
        return Err(format!(
            "{h:?} is not a DNS host name (no scheme, port, path or IP address)"
        ));
    }
    if host == "localhost" {
        return Err("localhost is reserved for the sidecar's own answers".into());
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (String, Option<u16>) {
        let a = Authority::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        (a.host, a.port)
    }

    #[test]
    fn accepts_what_it_can_name_precisely() {
        assert_eq!(ok("api.github.com"), ("api.github.com".into(), None));
        assert_eq!(ok("API.GitHub.com."), ("api.github.com".into(), None));
        assert_eq!(
            ok("api.github.com:8443"),
            ("api.github.com".into(), Some(8443))
        );
        assert_eq!(ok("1.2.3.4:80"), ("1.2.3.4".into(), Some(80)));
        assert_eq!(ok("[::1]"), ("::1".into(), None));
        assert_eq!(ok("[2001:DB8::1]:443"), ("2001:db8::1".into(), Some(443)));
        assert_eq!(
            ok("_dmarc.example.com"),
            ("_dmarc.example.com".into(), None)
        );
        assert_eq!(ok("h:65535").1, Some(65535));
    }

    #[test]
    fn refuses_every_ambiguous_shape() {
        for bad in [
            "",
            "attacker.example:1.stripe.com",
            "attacker.example:443.stripe.com",
            "attacker.example:x",
            "attacker.example:",
            "attacker.example:0",
            "attacker.example:65536",
            "attacker.example:123456",
            "attacker.example:+443",
            "attacker.example:-1",
            "attacker.example: 443",
            "attacker.example:443:443",
            "user@api.stripe.com",
            "u:p@api.stripe.com",
            "api.stripe.com%2eevil.com",
            "api stripe.com",
            "api.stripe.com\t",
            "api..stripe.com",
            ".api.stripe.com",
            "api.stripe.com..",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[fe80::1%eth0]",
            "[not-v6]",
            "héllo.com",
            "a/b",
            "a\\b",
            "a?b",
            "a#b",
        ] {
            assert!(Authority::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}.com", "a".repeat(250));
        assert!(Authority::parse(&long).is_err());
        let label = format!("{}.com", "a".repeat(64));
        assert!(Authority::parse(&label).is_err());
    }

    #[test]
    fn canonical_text() {
        for (input, canon) in [
            ("API.github.com.", "api.github.com"),
            ("api.github.com:8443", "api.github.com:8443"),
            ("[::1]:9", "[::1]:9"),
            ("[::1]", "[::1]"),
        ] {
            assert_eq!(Authority::parse(input).unwrap().to_string(), canon);
        }
        let error = Authority::parse("attacker.example:1.stripe.com").unwrap_err();
        assert!(!error.to_string().contains("attacker"), "{error}");
    }

    #[test]
    fn dns_names_for_configuration() {
        assert_eq!(check_dns_name("API.GitHub.com.").unwrap(), "api.github.com");
        for bad in [
            "https://api.github.com",
            "api.github.com:443",
            "api.github.com/x",
            "1.2.3.4",
            "::1",
            "-a.com",
            "a_b.com",
            "",
            "localhost",
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn normalize_names() {
        assert_eq!(normalize("API.GitHub.com."), "api.github.com");
        assert_eq!(normalize("a.."), "a.");
    }
}
