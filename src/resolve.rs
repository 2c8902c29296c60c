//! Turning names into addresses to dial, without blocking and without being tricked.
//!
//! Owns: asynchronous DNS (tokio's resolver on the blocking pool, never a worker thread),
//! curl-style `--connect-to HOST:PORT:ADDR:PORT2` pins, the SSRF guard that refuses loopback,
//! private, link-local and Fly-internal (fdaa::/8) addresses after resolution (so DNS rebinding
//! cannot pass), and a small TTL cache for the sidecar's fixed tokenizer address.
//! Must not: call pingora's `HttpPeer::new` with a name (it resolves blocking and panics).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One `--connect-to` pin: a request for `host:port` dials `addr:port2` instead.
/// An empty host or port matches any, as in curl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    host: String,
    port: Option<u16>,
    addr: String,
    addr_port: Option<u16>,
}

impl std::str::FromStr for ConnectTo {
    type Err = String;

    /// `HOST:PORT:ADDR:PORT2`; ADDR may be an IPv6 literal in brackets.
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("--connect-to {s:?}: expected HOST:PORT:ADDR:PORT2");
        let (host, rest) = s.split_once(':').ok_or_else(err)?;
        let (port, rest) = rest.split_once(':').ok_or_else(err)?;
        let (addr, addr_port) = rest.rsplit_once(':').ok_or_else(err)?;
        let port_of = |p: &str| -> Result<Option<u16>, String> {
            if p.is_empty() {
                Ok(None)
            } else {
                p.parse().map(Some).map_err(|_| err())
            }
        };
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        Ok(ConnectTo {
            host: host.to_ascii_lowercase(),
            port: port_of(port)?,
            addr: addr.to_string(),
            addr_port: port_of(addr_port)?,
        })
    }
}

impl ConnectTo {
    /// The (address, port) to dial for `host:port`, if this pin applies.
    pub fn apply(&self, host: &str, port: u16) -> Option<(String, u16)> {
        let host_ok = self.host.is_empty() || self.host.eq_ignore_ascii_case(host);
        let port_ok = self.port.is_none_or(|p| p == port);
        if !(host_ok && port_ok) {
            return None;
        }
        let addr = if self.addr.is_empty() {
            host.to_string()
        } else {
            self.addr.clone()
        };
        Some((addr, self.addr_port.unwrap_or(port)))
    }
}

/// Resolve `host:port` to addresses. IP literals skip DNS.
pub async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| format!("cannot resolve {bare}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("cannot resolve {bare}: no addresses"));
    }
    Ok(addrs)
}

/// Why an address may not be dialled on a client's behalf, or `None` if it may.
///
/// IPv6 forms that carry an IPv4 address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`,
/// NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`) are refused
/// outright: each can reach an internal IPv4 address through a translator.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || o[0] == 0 {
                Some("non-routable")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("shared (CGNAT)")
            } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
                Some("benchmarking (198.18.0.0/15)")
            } else if o[0] >= 240 {
                Some("reserved (240.0.0.0/4)")
            } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
                Some("IETF protocol assignments (192.0.0.0/24)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("non-routable")
            } else if s[..6] == [0; 6] {
                Some("IPv4-compatible (::/96)")
            } else if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1) {
                Some("NAT64 (64:ff9b::/96)")
            } else if s[0] == 0x2002 {
                Some("6to4 (2002::/16)")
            } else if s[0] == 0x2001 && s[1] == 0 {
                Some("Teredo (2001::/32)")
            } else if (s[0] & 0xff00) == 0xfd00 && (s[0] & 0x00ff) == 0x00aa {
                Some("fdaa::/8 (Fly private network)")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("private")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else {
                None
            }
        }
    }
}

/// A name resolved at most once per `ttl`; for the sidecar's single tokenizer address.
pub struct CachedName {
    host: String,
    port: u16,
    ttl: Duration,
    cached: Mutex<Option<(Instant, SocketAddr)>>,
}

impl CachedName {
    pub fn new(host: &str, port: u16, ttl: Duration) -> Self {
        CachedName {
            host: host.to_string(),
            port,
            ttl,
            cached: Mutex::new(None),
        }
    }

    pub async fn get(&self) -> Result<SocketAddr, String> {
        if let Some((at, addr)) = *self.cached.lock().unwrap() {
            if at.elapsed() < self.ttl {
                return Ok(addr);
            }
        }
        let addr = lookup(&self.host, self.port).await?[0];
        *self.cached.lock().unwrap() = Some((Instant::now(), addr));
        Ok(addr)
    }
}

/// Cache of resolved upstream names for the tokenizer (many names, short TTL).
#[derive(Default)]
pub struct NameCache {
    entries: Mutex<HashMap<(String, u16), Resolved>>,
}

/// When a name was resolved, and its addresses.
type Resolved = (Instant, Vec<SocketAddr>);

impl NameCache {
    pub const TTL: Duration = Duration::from_secs(30);
    const MAX: usize = 4096;

    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let key = (host.to_ascii_lowercase(), port);
        if let Some((at, addrs)) = self.entries.lock().unwrap().get(&key) {
            if at.elapsed() < Self::TTL {
                return Ok(addrs.clone());
            }
        }
        let addrs = lookup(host, port).await?;
        let mut map = self.entries.lock().unwrap();
        if map.len() >= Self::MAX {
            map.retain(|_, (at, _)| at.elapsed() < Self::TTL);
            if map.len() >= Self::MAX {
                map.clear();
            }
        }
        map.insert(key, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_to_semantics() {
        let c: ConnectTo = "api.github.com:443:127.0.0.1:8443".parse().unwrap();
        assert_eq!(
            c.apply("api.github.com", 443),
            Some(("127.0.0.1".into(), 8443))
        );
        assert_eq!(
            c.apply("API.GITHUB.COM", 443),
            Some(("127.0.0.1".into(), 8443))
        );
        assert_eq!(c.apply("api.github.com", 8443), None);
        assert_eq!(c.apply("other", 443), None);
        let any: ConnectTo = "::[::1]:9000".parse().unwrap();
        assert_eq!(any.apply("x", 1), Some(("::1".into(), 9000)));
        let keep_port: ConnectTo = "h::10.0.0.1:".parse().unwrap();
        assert_eq!(keep_port.apply("h", 443), Some(("10.0.0.1".into(), 443)));
        assert!("nonsense".parse::<ConnectTo>().is_err());
        assert!("h:x:1.2.3.4:5".parse::<ConnectTo>().is_err());
    }

    #[test]
    fn ssrf_classes() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fdaa:0:1::2",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "198.18.0.1",
            "198.19.255.254",
            "240.0.0.1",
            "255.255.255.254",
            "192.0.0.1",
            "192.0.0.170",
        ] {
            assert!(forbidden(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in [
            "140.82.112.6",
            "2606:50c0:8000::64",
            "8.8.8.8",
            "198.20.0.1",
            "192.0.2.1",
            "2001:db8::1",
            "2001:4860::8888",
            "64:ff9c::1",
        ] {
            assert!(forbidden(good.parse().unwrap()).is_none(), "{good}");
        }
        assert!(forbidden("fdaa::3".parse().unwrap())
            .unwrap()
            .contains("fdaa"));
    }

    #[tokio::test]
    async fn literals_skip_dns() {
        assert_eq!(
            lookup("[::1]", 80).await.unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        assert_eq!(
            lookup("127.0.0.1", 8).await.unwrap(),
            vec!["127.0.0.1:8".parse().unwrap()]
        );
    }
}
