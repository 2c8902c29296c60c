//! The forward-proxy listener (`proxy_listen:`): for clients that honour `HTTPS_PROXY` and send
//! `CONNECT host:443` instead of resolving the API's name to the sidecar.
//!
//! Owns: reading the CONNECT request (header deadline and size cap as on the TLS listener),
//! the listener's optional password (`Proxy-Authorization: Basic`), and the decision per
//! target:
//! ```text
//! routed host, port 443        intercepted: TLS with the minted certificate, the route pinned
//!                              to the CONNECT target (SNI and Host must name it, else 421),
//!                              then the same request path as the TLS listener (proxy.rs)
//! `passthrough:` pattern       tunnelled byte for byte to the name asked for, not intercepted
//! an IP address, other ports   403 with a short reason
//! anything else                403 (not routed, not in passthrough)
//! plain-HTTP requests          403 for a routed host (no credentials over cleartext), else 403
//! ```
//! Must not: intercept a host that is not routed, tunnel a routed host (that would bypass the
//! route's rules and credential), dial anything but the exact name it matched, or log the
//! listener's password.

use async_trait::async_trait;
use openssl::ssl::SslAcceptor;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::server::handshake_with_callback;
use pingora_core::protocols::{GetSocketDigest, Stream};
use pingora_core::server::ShutdownWatch;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use super::certstore::{CertStore, Pinned, TlsCallbacks};
use super::config::Sidecar;
use super::conn::{GuardedApp, Limits, Permit, MAX_HEADER_BYTES};
use super::metrics;
use crate::host::Authority;
use crate::logging::Throttle;

/// An unrouted host the proxy listener tunnels without interception: `name`, `*.suffix` (any
/// name below `suffix`, not `suffix` itself) or `*` (any name), with `:port` (default 443).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passthrough {
    /// The pattern as configured, for logs.
    pub text: String,
    /// `None` for `*`; the name, or the suffix after `*.`.
    name: Option<String>,
    wildcard: bool,
    port: u16,
}

impl Passthrough {
    pub fn parse(p: &str) -> Result<Passthrough, String> {
        let p = p.trim();
        let (host, port) = match p.rsplit_once(':') {
            None => (p, 443),
            Some((h, port)) => match port.parse::<u16>() {
                Ok(n) if n > 0 && port.bytes().all(|b| b.is_ascii_digit()) => (h, n),
                _ => return Err(format!("{p:?}: the port is not a number from 1 to 65535")),
            },
        };
        let (wildcard, name) = if host == "*" {
            (true, None)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            (true, Some(suffix))
        } else {
            (false, Some(host))
        };
        let name = match name {
            None => None,
            Some(n) => {
                let n = crate::host::check_dns_name(n)
                    .map_err(|e| format!("{p:?}: {e} (a pattern is name, *.suffix or *)"))?;
                Some(n)
            }
        };
        Ok(Passthrough {
            text: p.to_string(),
            name,
            wildcard,
            port,
        })
    }

    /// Does the (normalized) `host` at `port` fall under this pattern?
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        match (&self.name, self.wildcard) {
            (None, _) => true,
            (Some(n), false) => host == n,
            (Some(n), true) => host
                .strip_suffix(n.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

/// What a request on the proxy listener gets.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Intercept with a minted certificate; the route is this host.
    Intercept(String),
    /// Tunnel untouched to this host and port (the pattern that allowed it).
    Tunnel(String, u16, String),
    /// Answer with this status and reason, and close. The label counts it.
    Refuse(u16, String, &'static str),
}

fn refuse(status: u16, reason: impl Into<String>, label: &'static str) -> Decision {
    Decision::Refuse(status, reason.into(), label)
}

/// The request line and the headers this listener reads.
struct Head {
    method: String,
    target: String,
    /// Every Proxy-Authorization value (zeroized when dropped).
    proxy_auth: Vec<Zeroizing<Vec<u8>>>,
    /// Bytes after the header (a client may send its ClientHello without waiting).
    rest: Vec<u8>,
}

/// Why no request head could be read.
enum HeadError {
    /// The client left (or sent nothing) before a whole header: nothing to answer.
    Gone,
    Refused(u16, &'static str, &'static str),
}

/// Read one HTTP/1 request head, at most [`MAX_HEADER_BYTES`].
async fn read_head(stream: &mut L4Stream) -> Result<Head, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Gone)?;
        if n == 0 {
            return Err(HeadError::Gone);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                if len > MAX_HEADER_BYTES {
                    return Err(too_large());
                }
                let proxy_auth = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
                    .map(|h| Zeroizing::new(h.value.to_vec()))
                    .collect();
                return Ok(Head {
                    method: req.method.unwrap_or_default().to_string(),
                    target: req.path.unwrap_or_default().to_string(),
                    proxy_auth,
                    rest: buf[len..].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEADER_BYTES => {
                return Err(too_large())
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError::Refused(
                    431,
                    "more than 64 header fields",
                    "header_too_large",
                ))
            }
            Err(_) => {
                return Err(HeadError::Refused(
                    400,
                    "not an HTTP/1.1 request",
                    "bad_request",
                ))
            }
        }
    }
}

fn too_large() -> HeadError {
    HeadError::Refused(431, "request header over 32 KiB", "header_too_large")
}

/// Does any `Proxy-Authorization` value carry `password` (Basic, any user name)?
fn authorized(values: &[Zeroizing<Vec<u8>>], password: &str) -> bool {
    use base64::Engine;
    values.iter().any(|v| {
        let Some(b64) = v
            .get(..6)
            .filter(|s| s.eq_ignore_ascii_case(b"basic "))
            .map(|_| v[6..].trim_ascii())
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return false;
        };
        let decoded = Zeroizing::new(decoded);
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return false;
        };
        bool::from(decoded[colon + 1..].ct_eq(password.as_bytes()))
    })
}

/// Is `host` an IP address, or a name a resolver would read as one (`127.1`, `0x7f.1`,
/// `2130706433`: a last label of digits or hex)?
fn ip_like(a: &Authority) -> bool {
    if a.is_v6() || a.host.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let last = a.host.rsplit('.').next().unwrap_or("");
    last.bytes().all(|b| b.is_ascii_digit())
        || (last.len() > 2
            && last[..2].eq_ignore_ascii_case("0x")
            && last[2..].bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Decide what a request head gets. `password` is the listener's, if it has one.
fn decide(cfg: &Sidecar, head: &Head, password: Option<&str>) -> Decision {
    if let Some(p) = password {
        if !authorized(&head.proxy_auth, p) {
            return refuse(
                407,
                "Proxy Authentication Required: put the password in the proxy URL \
                 (HTTPS_PROXY=http://user:PASSWORD@host:port)",
                "auth",
            );
        }
    }
    let Some(proxy) = &cfg.proxy else {
        return refuse(500, "no proxy listener configured", "bad_request");
    };
    if head.method != "CONNECT" {
        let lower = head.target.to_ascii_lowercase();
        let authority = ["http://", "https://"]
            .iter()
            .find_map(|s| lower.strip_prefix(s))
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
        return match authority.map(Authority::parse) {
            Some(Ok(a)) if cfg.routes.contains_key(&a.host) => refuse(
                403,
                format!(
                    "plain HTTP to {} is refused: credentials never travel in cleartext (use https://)",
                    a.host
                ),
                "plain_http",
            ),
            Some(_) => refuse(
                403,
                "only HTTPS is proxied here (CONNECT host:443); plain-HTTP requests are refused",
                "plain_http",
            ),
            None => refuse(
                400,
                "this is the sidecar's proxy listener: send CONNECT host:443 (set HTTPS_PROXY to it)",
                "bad_request",
            ),
        };
    }
    let a = match Authority::parse(&head.target) {
        Ok(a) => a,
        Err(e) => return refuse(400, format!("bad CONNECT target: {e}"), "bad_request"),
    };
    let Some(port) = a.port else {
        return refuse(
            400,
            "bad CONNECT target: it needs a port (host:443)",
            "bad_request",
        );
    };
    if ip_like(&a) {
        return refuse(
            403,
            "CONNECT to an IP address is refused: name the host (routes and passthrough are by name)",
            "ip",
        );
    }
    if cfg.routes.contains_key(&a.host) {
        if port != 443 {
            return refuse(
                403,
                format!("{} is routed on port 443 only, not {port}", a.host),
                "port",
            );
        }
        return Decision::Intercept(a.host);
    }
    if let Some(p) = proxy.passthrough.iter().find(|p| p.matches(&a.host, port)) {
        return Decision::Tunnel(a.host, port, p.text.clone());
    }
    refuse(
        403,
        format!("{}:{port} is not routed and not in passthrough", a.host),
        "unrouted",
    )
}

/// A whole HTTP/1.1 answer that closes the connection.
fn answer(status: u16, reason: &str) -> Vec<u8> {
    let text = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let extra = if status == 407 {
        "Proxy-Authenticate: Basic realm=\"proxypilot\"\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n{extra}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    )
    .into_bytes()
}

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// Longest wait to connect to a passthrough host.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Refusals are logged at most a few times per interval (the metric counts every one).
static REFUSED_LOG: Throttle = Throttle::new(10, Duration::from_secs(10));

/// The proxy listener's application. `http` is the TLS listener's own (guarded) HTTP proxy,
/// which serves the intercepted connections.
pub struct ForwardApp<A> {
    pub cfg: Arc<Sidecar>,
    pub store: Arc<CertStore>,
    pub limits: Arc<Limits>,
    pub acceptor: SslAcceptor,
    pub http: Arc<GuardedApp<A>>,
}

impl<A: ServerApp + Send + Sync + 'static> ForwardApp<A> {
    async fn serve(self: &Arc<Self>, mut l4: L4Stream, shutdown: &ShutdownWatch) {
        let peer = l4
            .get_socket_digest()
            .and_then(|d| d.peer_addr().map(|a| a.to_string()))
            .unwrap_or_default();
        let permit = self.limits.try_admit();
        let header_timeout = self.limits.header_timeout;
        let head = match tokio::time::timeout(header_timeout, read_head(&mut l4)).await {
            Ok(Ok(head)) => head,
            Ok(Err(HeadError::Gone)) => return,
            Ok(Err(HeadError::Refused(status, reason, label))) => {
                return self.refuse(l4, &peer, "", status, reason, label).await
            }
            Err(_) => {
                metrics::CLIENT_TIMEOUTS
                    .with_label_values(&["header"])
                    .inc();
                let reason = "request header not complete in time";
                return self.refuse(l4, &peer, "", 408, reason, "timeout").await;
            }
        };
        let target = if head.method == "CONNECT" {
            head.target.chars().take(80).collect::<String>()
        } else {
            head.method.chars().take(16).collect::<String>()
        };
        let Some(permit) = permit else {
            let reason = format!(
                "too many connections to the sidecar (max_connections {}); try again shortly",
                self.limits.max_connections
            );
            return self.refuse(l4, &peer, &target, 503, &reason, "busy").await;
        };
        let password = self
            .cfg
            .proxy
            .as_ref()
            .and_then(|p| p.password.as_deref().map(|p| p.as_str()));
        match decide(&self.cfg, &head, password) {
            Decision::Refuse(status, reason, label) => {
                self.refuse(l4, &peer, &target, status, &reason, label)
                    .await
            }
            Decision::Intercept(host) => {
                if l4.write_all(ESTABLISHED).await.is_err() || l4.flush().await.is_err() {
                    return;
                }
                if !head.rest.is_empty() {
                    l4.rewind(&head.rest);
                }
                metrics::CONNECTS.with_label_values(&["intercepted"]).inc();
                log::debug!("CONNECT {host}:443 from {peer}: intercepted");
                self.intercept(l4, host, permit, shutdown).await
            }
            Decision::Tunnel(host, port, pattern) => {
                self.tunnel(l4, &peer, host, port, &pattern, head.rest, permit)
                    .await
            }
        }
    }

    async fn refuse(
        &self,
        mut l4: L4Stream,
        peer: &str,
        target: &str,
        status: u16,
        reason: &str,
        label: &'static str,
    ) {
        metrics::CONNECTS.with_label_values(&[label]).inc();
        if let Some(more) = REFUSED_LOG.allow() {
            log::info!("proxy listener: {target} from {peer} refused {status}: {reason}{more}");
        }
        let _ = l4.write_all(&answer(status, reason)).await;
        let _ = l4.flush().await;
        let _ = l4.shutdown().await;
    }

    /// TLS with the target's certificate, then the TLS listener's request path.
    async fn intercept(
        self: &Arc<Self>,
        l4: L4Stream,
        host: String,
        permit: Permit,
        shutdown: &ShutdownWatch,
    ) {
        let callbacks = TlsCallbacks {
            store: self.store.clone(),
            limits: self.limits.clone(),
            pin: Some(Pinned {
                target: host.clone(),
                permit: Mutex::new(Some(permit)),
            }),
        };
        let turn = self.limits.handshake_turn().await;
        let handshake = handshake_with_callback(&self.acceptor, l4, &callbacks);
        let tls = match tokio::time::timeout(self.limits.header_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                log::debug!("CONNECT {host}: TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                metrics::CLIENT_TIMEOUTS
                    .with_label_values(&["tls_hello"])
                    .inc();
                return;
            }
        };
        drop(turn);
        drop(callbacks);
        self.http.process_new(Box::new(tls), shutdown).await;
    }

    /// Dial the name asked for and copy bytes both ways until either side ends.
    #[allow(clippy::too_many_arguments)]
    async fn tunnel(
        &self,
        mut l4: L4Stream,
        peer: &str,
        host: String,
        port: u16,
        pattern: &str,
        early: Vec<u8>,
        _permit: Permit,
    ) {
        let target = format!("{host}:{port}");
        let dial = async {
            let mut last = None;
            for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("the name has no address")))
        };
        let mut up = match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = format!("cannot reach {target}: {e}");
                return self
                    .refuse(l4, peer, &target, 502, &reason, "dial_failed")
                    .await;
            }
            Err(_) => {
                let reason = format!("cannot reach {target}: no connection in time");
                return self
                    .refuse(l4, peer, &target, 504, &reason, "dial_failed")
                    .await;
            }
        };
        if l4.write_all(ESTABLISHED).await.is_err() || l4.flush().await.is_err() {
            return;
        }
        if !early.is_empty() && up.write_all(&early).await.is_err() {
            return;
        }
        metrics::CONNECTS.with_label_values(&["passthrough"]).inc();
        log::info!("CONNECT {target} from {peer}: tunnelled untouched (passthrough {pattern:?})");
        match tokio::io::copy_bidirectional(&mut l4, &mut up).await {
            Ok((out, back)) => log::info!(
                "CONNECT {target} from {peer}: tunnel closed, {out} bytes out, {back} back"
            ),
            Err(e) => log::info!("CONNECT {target} from {peer}: tunnel ended: {e}"),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ForwardApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // The proxy listener is plain TCP: its streams are pingora's L4 streams.
        let l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => *l4,
            Err(_) => {
                log::error!("proxy listener: a stream that is not TCP");
                return None;
            }
        };
        self.serve(l4, shutdown).await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_patterns() {
        let p = Passthrough::parse("*.PyPI.org").unwrap();
        assert!(p.matches("files.pypi.org", 443) && p.matches("a.b.pypi.org", 443));
        assert!(!p.matches("pypi.org", 443) && !p.matches("evilpypi.org", 443));
        assert!(!p.matches("files.pypi.org", 80));
        let p = Passthrough::parse("registry.npmjs.org").unwrap();
        assert!(p.matches("registry.npmjs.org", 443));
        assert!(!p.matches("x.registry.npmjs.org", 443) && !p.matches("npmjs.org", 443));
        let p = Passthrough::parse("github.com:22").unwrap();
        assert!(p.matches("github.com", 22) && !p.matches("github.com", 443));
        let p = Passthrough::parse("*").unwrap();
        assert!(p.matches("anything.example", 443) && !p.matches("anything.example", 8443));
        for bad in [
            "",
            "*.",
            "a..b",
            "x:0",
            "x:http",
            "1.2.3.4",
            "https://x",
            "a b",
        ] {
            assert!(Passthrough::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ip_like_targets() {
        for t in [
            "1.2.3.4:443",
            "[::1]:443",
            "127.1:443",
            "2130706433:443",
            "0x7f.1:443",
        ] {
            assert!(ip_like(&Authority::parse(t).unwrap()), "{t}");
        }
        for t in ["api.github.com:443", "a1.example:443", "x.0xfoo:443"] {
            assert!(!ip_like(&Authority::parse(t).unwrap()), "{t}");
        }
    }

    #[test]
    fn basic_auth_checks_the_password_only() {
        let v = |s: &str| vec![Zeroizing::new(s.as_bytes().to_vec())];
        use base64::Engine;
        let b = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(authorized(&v(&b("agent:s3cret")), "s3cret"));
        assert!(authorized(&v(&b(":s3cret")), "s3cret"));
        assert!(authorized(
            &v(&b("u:s3cret").replace("Basic", "basic")),
            "s3cret"
        ));
        assert!(!authorized(&v(&b("agent:s3cre")), "s3cret"));
        assert!(!authorized(&v(&b("s3cret")), "s3cret"));
        assert!(!authorized(&v("Bearer s3cret"), "s3cret"));
        assert!(!authorized(&v("Basic !!!"), "s3cret"));
        assert!(!authorized(&[], "s3cret"));
    }

    #[test]
    fn refusals_are_whole_answers() {
        let a = String::from_utf8(answer(407, "who are you")).unwrap();
        assert!(a.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"));
        assert!(a.contains("Proxy-Authenticate: Basic"));
        let (head, body) = a.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
