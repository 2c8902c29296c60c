//! The tokenizer: an HTTP forward proxy that opens sealed secrets and injects real credentials.
//!
//! Owns: the request side of the reference wire protocol — target from an absolute-form URI (or
//! origin-form + Host), every `Proxy-Tokenizer` header opened, authorized, validated and turned
//! into edits, then the request re-sent over TLS to the real host (port 80/none → 443, 443
//! refused) with the tokenizer's own headers removed. Unlike the reference it keeps client
//! connections alive and pools upstream connections.
//!
//! Phases, in the order a request meets them:
//! ```text
//! request_filter         target, Fly-Src, open + authorize + validate every secret, plan edits
//!                        (reads the body first only for HMAC-of-body)
//! upstream_peer          pins (--connect-to) or DNS, SSRF guard on the resolved address, TLS peer
//! upstream_request_filter origin-form target, Host, strip tokenizer headers, apply header edits
//! request_body_filter    streaming placeholder replacement
//! fail_to_proxy          the one error path: status + short reason + log line
//! logging                one line per request with the secrets' non-secret parts
//! ```
//! Must not: log or return a token, a sealed secret, a Proxy-Authorization value or a key.

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::authority::{raw_target_authority, RawTargetAuthority};
use pingora_http::RequestHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use zeroize::Zeroizing;

use super::authorize::{authorize, Credentials};
use super::config::Settings;
use super::flysrc::FlySrc;
use super::processor::{hmac_header, plan, Edit, StreamReplace};
use crate::host::{self, Authority};
use crate::reply::{self, read_whole_body, refuse};
use crate::resolve::{forbidden, lookup, NameCache};
use crate::sealing::{OpenKey, TokenizerHeader};
use crate::secret::{Checked, Secret, SecretError};
use crate::timeouts;

pub const HEADER: &str = "Proxy-Tokenizer";
/// Largest body the tokenizer reads whole to compute an HMAC over it.
pub const HMAC_BODY_LIMIT: usize = 64 * 1024;

pub struct Tokenizer {
    settings: Arc<Settings>,
    names: NameCache,
    opened: SecretCache,
}

/// Secrets already opened and checked, by their sealed form. Opening costs two X25519
/// operations, and a sidecar sends the same few sealed secrets on every request. Only what
/// depends on the secret alone is cached: authorization and validators run on every request.
/// Entries are wiped (zeroized) when evicted. Failures are never cached.
struct SecretCache {
    entries: std::sync::Mutex<lru::LruCache<String, Arc<Checked>>>,
}

impl SecretCache {
    const CAPACITY: usize = 1024;

    fn new() -> Self {
        SecretCache {
            entries: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(Self::CAPACITY).expect("non-zero"),
            )),
        }
    }

    fn open(&self, key: &OpenKey, sealed: &str) -> Result<Arc<Checked>> {
        if let Some(c) = self.entries.lock().unwrap().get(sealed) {
            return Ok(c.clone());
        }
        let json = key.open(sealed).or_else(|e| bad_request(e.to_string()))?;
        let checked = Secret::from_json(&json)
            .and_then(Secret::check)
            .or_else(secret_error)?;
        let checked = Arc::new(checked);
        self.entries
            .lock()
            .unwrap()
            .put(sealed.to_string(), checked.clone());
        Ok(checked)
    }
}

/// Where a request goes, parsed once and strictly: `host` is dialled on `port` with TLS (and is
/// the SNI and the name the certificate must carry); `authority` is the canonical text of the
/// same pair (`host`, or `host:port` when the port is not 443) and is exactly what the
/// secret's host validators see and what the upstream gets as `Host`.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    authority: String,
}

impl Target {
    /// From the client's authority: port absent or 80 means 443 (the client speaks plain HTTP
    /// to us, we speak TLS upstream); 443 is refused as in the reference.
    fn from_authority(a: Authority) -> Result<Target> {
        let port = match a.port {
            None | Some(80) => 443,
            Some(443) => return bad_request("proxied request must be HTTP (port 443 refused)"),
            Some(p) => p,
        };
        let authority = if port == 443 {
            a.host_text()
        } else {
            format!("{}:{port}", a.host_text())
        };
        Ok(Target {
            host: a.host,
            port,
            authority,
        })
    }
}

#[derive(Default)]
pub struct Ctx {
    target: Option<Target>,
    headers: Vec<(String, Zeroizing<String>)>,
    body: Vec<StreamReplace>,
    secrets: Vec<Arc<Checked>>,
    fly_src: Option<FlySrc>,
    started: Option<Instant>,
    reason: Option<String>,
}

fn bad_request<T>(msg: impl Into<String>) -> Result<T> {
    refuse(400, msg)
}

fn secret_error<T>(e: SecretError) -> Result<T> {
    match e {
        SecretError::BadRequest(m) | SecretError::Unsupported(m) => refuse(400, m),
        SecretError::NotAuthorized(m) => refuse(407, m),
    }
}

fn authority(text: &[u8]) -> Result<Authority> {
    let text = std::str::from_utf8(text).or_else(|_| bad_request("bad host"))?;
    Authority::parse(text).or_else(|e| bad_request(e.to_string()))
}

impl Tokenizer {
    pub fn new(settings: Settings) -> Self {
        Tokenizer {
            settings: Arc::new(settings),
            names: NameCache::default(),
            opened: SecretCache::new(),
        }
    }

    /// The target of a request: absolute-form `http://host[:port]/...`, or origin-form + Host.
    fn target(&self, req: &RequestHeader) -> Result<Target> {
        if req.method == http::Method::CONNECT {
            return bad_request(
                "CONNECT is not supported: send plain http:// requests through this proxy",
            );
        }
        let parsed = match raw_target_authority(req.raw_path()) {
            RawTargetAuthority::Absolute {
                scheme,
                authority: a,
                ..
            } => {
                if !scheme.eq_ignore_ascii_case(b"http") {
                    return bad_request("proxied request must be HTTP");
                }
                authority(a)?
            }
            RawTargetAuthority::AmbiguousAuthority => {
                return bad_request("ambiguous request target");
            }
            RawTargetAuthority::None => {
                if !req.raw_path().starts_with(b"/") {
                    return bad_request("request target must be absolute-form or start with /");
                }
                let hosts: Vec<_> = req.headers.get_all(http::header::HOST).iter().collect();
                if hosts.len() != 1 {
                    return bad_request("must specify exactly one host");
                }
                let a = authority(hosts[0].as_bytes())?;
                if self
                    .settings
                    .hostnames
                    .iter()
                    .any(|h| host::normalize(h) == a.host)
                {
                    return bad_request("circular request");
                }
                a
            }
        };
        Target::from_authority(parsed)
    }

    /// A Fly-Src that verifies, or why the one present did not (None, None when absent).
    fn fly_src(&self, session: &Session) -> (Option<FlySrc>, Option<String>) {
        let value = session.get_header("fly-src");
        let Some(value) = value else {
            return (None, None);
        };
        let Some(verifier) = &self.settings.fly_src else {
            return (None, Some("Fly-Src verification is not configured".into()));
        };
        let source = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        match source {
            Some(ip) if verifier.trusts_source(ip) => {}
            _ => return (None, Some("Fly-Src from an untrusted network".into())),
        }
        let sig = session
            .get_header("fly-src-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match value.to_str() {
            Ok(v) => match verifier.verify(v, sig, SystemTime::now()) {
                Ok(src) => (Some(src), None),
                Err(e) => (None, Some(e)),
            },
            Err(_) => (None, Some("malformed Fly-Src".into())),
        }
    }

    async fn resolve(&self, t: &Target) -> Result<SocketAddr> {
        for pin in &self.settings.connect_to {
            if let Some((addr, port)) = pin.apply(&t.host, t.port) {
                // The operator named this address explicitly: no SSRF guard.
                let addrs = lookup(&addr, port)
                    .await
                    .map_err(|e| Error::explain(ErrorType::HTTPStatus(502), e))?;
                return Ok(addrs[0]);
            }
        }
        let addrs = self
            .names
            .lookup(&t.host, t.port)
            .await
            .map_err(|e| Error::explain(ErrorType::HTTPStatus(502), e))?;
        let mut denied = None;
        for a in &addrs {
            match forbidden(a.ip()) {
                None => return Ok(*a),
                Some(why) => denied = Some((why, *a)),
            }
        }
        let (why, a) = denied.expect("lookup returns at least one address");
        bad_request(format!("dialing {why} address {a} denied"))
    }
}

#[async_trait]
impl ProxyHttp for Tokenizer {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Some(Instant::now()),
            ..Default::default()
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if self.settings.close_connections {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            session.set_keepalive(Some(timeouts::TOKENIZER_CLIENT_IDLE.as_secs()));
        }
        let target = self.target(session.req_header())?;
        ctx.target = Some(target.clone());

        let (fly_src, fly_src_error) = self.fly_src(session);
        if self.settings.require_fly_src && fly_src.is_none() {
            return bad_request(format!(
                "a valid Fly-Src is required: {}",
                fly_src_error.as_deref().unwrap_or("none present")
            ));
        }

        let req = session.req_header();
        let proxy_auth: Vec<&[u8]> = req
            .headers
            .get_all(http::header::PROXY_AUTHORIZATION)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let creds = Credentials {
            proxy_authorization: proxy_auth,
            fly_src: fly_src.as_ref(),
            fly_src_error: fly_src_error.as_deref(),
        };

        let mut hmac_jobs = Vec::new();
        for value in req.headers.get_all(HEADER).iter() {
            let value = value
                .to_str()
                .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "bad tokenizer header"))?;
            let header = TokenizerHeader::parse(value).or_else(bad_request)?;
            let checked = self.opened.open(&self.settings.open_key, &header.sealed)?;
            ctx.secrets.push(checked.clone());
            authorize(&checked.auth, &creds).or_else(secret_error)?;
            checked
                .validate_host(&target.authority)
                .or_else(secret_error)?;
            // Rules sealed with the token judge the path this tokenizer forwards.
            if let Err(r) = checked.validate_request(req.method.as_str(), req.uri.path()) {
                return refuse(r.status, format!("sealed rules: {}", r.reason));
            }
            match plan(&checked.processor, &header.params).or_else(secret_error)? {
                Edit::Header { name, value } => ctx.headers.push((name, value)),
                Edit::Body(r) => ctx.body.push(r),
                Edit::HmacOfBody { processor, params } => hmac_jobs.push((processor, params)),
            }
        }
        if ctx.secrets.is_empty() && !self.settings.open_proxy {
            return bad_request("no Proxy-Tokenizer header (this tokenizer is not an open proxy)");
        }
        ctx.fly_src = fly_src;

        if !hmac_jobs.is_empty() {
            // The HMAC covers the verbatim body, so read it whole (bounded) before forwarding.
            let body = read_whole_body(session, HMAC_BODY_LIMIT, "to sign").await?;
            for (p, params) in hmac_jobs {
                match hmac_header(&p, &params, &body).or_else(secret_error)? {
                    Edit::Header { name, value } => ctx.headers.push((name, value)),
                    _ => unreachable!("hmac_header only makes header edits"),
                }
            }
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let target = ctx.target.as_ref().expect("request_filter sets the target");
        let addr = self.resolve(target).await?;
        let mut peer = HttpPeer::new(addr, true, target.host.clone());
        let o = &mut peer.options;
        o.ca = Some(self.settings.upstream_roots.clone());
        o.alpn = ALPN::H1;
        o.connection_timeout = Some(Duration::from_secs(10));
        o.total_connection_timeout = Some(Duration::from_secs(15));
        o.read_timeout = Some(self.settings.read_timeout);
        o.write_timeout = Some(self.settings.read_timeout);
        o.idle_timeout = Some(timeouts::TOKENIZER_UPSTREAM_IDLE);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let target = ctx.target.as_ref().expect("request_filter sets the target");
        let path = req
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| p.starts_with('/'))
            .unwrap_or_else(|| "/".to_string());
        req.set_uri(
            path.parse()
                .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "bad request target"))?,
        );
        req.insert_header(http::header::HOST, target.authority.as_str())?;
        req.remove_header(HEADER);
        req.remove_header("proxy-authorization");
        for h in &self.settings.filtered_headers {
            req.remove_header(h.as_str());
        }
        for (name, value) in &ctx.headers {
            let mut v = http::HeaderValue::from_str(value).map_err(|_| {
                Error::explain(
                    ErrorType::HTTPStatus(400),
                    "injected value is not a valid header",
                )
            })?;
            v.set_sensitive(true);
            req.insert_header(name.clone(), v)?;
        }
        if !ctx.body.is_empty() {
            // The body changes length as it streams: send it chunked.
            req.remove_header(&http::header::CONTENT_LENGTH);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !ctx.body.is_empty() {
            let mut data = body.take().map(|b| b.to_vec()).unwrap_or_default();
            for r in ctx.body.iter_mut() {
                data = r.feed(&data, end_of_stream);
            }
            *body = Some(Bytes::from(data));
        }
        reply::no_empty_last_chunk(body, end_of_stream);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut pingora_http::ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        reply::drop_length_where_forbidden(resp);
        if self.settings.close_connections {
            resp.insert_header(http::header::CONNECTION, "close")?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let what = match &ctx.target {
            Some(t) => format!("upstream {}:{}", t.host, t.port),
            None => "upstream".to_string(),
        };
        let (answer, reason) = reply::fail(session, e, &what).await;
        ctx.reason = Some(reason);
        answer
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _e: &Error) -> bool {
        // `logging` writes one line per request, errors included.
        true
    }

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {
        // No response compression: nothing to set up per request.
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let level = if status == 101 || (200..400).contains(&status) {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        if !log::log_enabled!(level) {
            return;
        }
        let req = session.req_header();
        let host = ctx
            .target
            .as_ref()
            .map(|t| t.authority.as_str())
            .unwrap_or("-");
        let source = session
            .client_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let ms = ctx
            .started
            .map(|s| s.elapsed().as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        let secrets: Vec<String> = ctx.secrets.iter().map(|c| c.summary()).collect();
        let fly = ctx
            .fly_src
            .as_ref()
            .map(|f| format!(" flysrc={}/{}/{}", f.org, f.app, f.instance))
            .unwrap_or_default();
        let reason = ctx
            .reason
            .as_ref()
            .map(|r| format!(" reason={r:?}"))
            .unwrap_or_default();
        log::log!(
            level,
            "{} {} {}{} status={} dur_ms={:.1} source={} secrets={:?}{}{}",
            req.method,
            host,
            req.uri.path(),
            if req.uri.query().is_some() {
                "?…"
            } else {
                ""
            },
            status,
            ms,
            source,
            secrets,
            fly,
            reason
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::config::Settings;

    fn tokenizer(hostnames: &[&str]) -> (Tokenizer, crate::sealing::SealKey) {
        let open_key = OpenKey::generate();
        let seal = open_key.seal_key();
        let settings = Settings {
            open_key,
            listen: vec![],
            filtered_headers: vec![],
            open_proxy: false,
            require_fly_src: false,
            fly_src: None,
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
            connect_to: vec![],
            upstream_roots: Arc::new(Box::new([])),
            read_timeout: Duration::from_secs(1),
            close_connections: false,
            threads: 1,
        };
        (Tokenizer::new(settings), seal)
    }

    fn req(target: &str, host: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        if let Some(h) = host {
            r.insert_header("Host", h).unwrap();
        }
        r
    }

    #[test]
    #[rustfmt::skip] // a table reads best as one row a line
    fn the_target_is_what_is_dialled() {
        let (t, _) = tokenizer(&["tokenizer.internal"]);
        for (target, host, dial, authority) in [
            ("http://api.github.com/x", None, ("api.github.com", 443), "api.github.com"),
            ("http://API.GitHub.com.:80/x", None, ("api.github.com", 443), "api.github.com"),
            ("http://api.github.com:8443/x", None, ("api.github.com", 8443), "api.github.com:8443"),
            ("http://[2001:db8::1]:8443/", None, ("2001:db8::1", 8443), "[2001:db8::1]:8443"),
            ("/x", Some("api.github.com"), ("api.github.com", 443), "api.github.com"),
            // absolute-form wins over Host (RFC 9112 §3.2.2)
            ("http://api.github.com/x", Some("evil.example"), ("api.github.com", 443), "api.github.com"),
        ] {
            let got = t.target(&req(target, host)).unwrap_or_else(|e| panic!("{target}: {e}"));
            assert_eq!((got.host.as_str(), got.port), dial, "{target}");
            assert_eq!(got.authority, authority, "{target}");
        }
        for (target, host, why) in [
            ("http://attacker.example:1.stripe.com/", None, "bad port"),
            ("/", Some("attacker.example:1.stripe.com"), "bad port"),
            ("http://api.github.com:443/", None, "port 443 refused"),
            ("https://api.github.com/", None, "must be HTTP"),
            ("/", None, "exactly one host"),
            ("/", Some("Tokenizer.Internal"), "circular"),
            ("*", Some("api.github.com"), "absolute-form or start with /"),
            ("http://u@api.github.com/", None, "userinfo"),
        ] {
            let e = t.target(&req(target, host)).err().unwrap_or_else(|| panic!("{target}"));
            assert!(e.to_string().contains(why), "{target} {host:?}: {e}");
        }
    }

    /// A session for `raw` request bytes, its header already read, as pingora hands it over.
    async fn session(raw: &[u8]) -> Session {
        let mock = tokio_test::io::Builder::new().read(raw).build();
        let mut s = Session::new_h1(Box::new(mock));
        assert!(s.read_request().await.unwrap());
        s
    }

    #[tokio::test]
    async fn request_filter_opens_authorizes_and_plans_in_process() {
        let (t, seal) = tokenizer(&[]);
        let secret = r#"{"inject_processor":{"token":"tok","dst":"X-Key","fmt":"%s"},"no_auth":{},"allowed_hosts":["api.github.com"]}"#;
        let sealed = seal.seal(secret.as_bytes());
        let raw = format!(
            "GET http://api.github.com/x HTTP/1.1\r\nHost: api.github.com\r\nProxy-Tokenizer: {sealed}\r\n\r\n"
        );
        let mut s = session(raw.as_bytes()).await;
        let mut ctx = t.new_ctx();
        assert!(!t.request_filter(&mut s, &mut ctx).await.unwrap());
        assert_eq!(ctx.target.as_ref().unwrap().authority, "api.github.com");
        assert_eq!(ctx.headers.len(), 1);
        assert_eq!(ctx.headers[0].0, "X-Key");
        assert_eq!(ctx.headers[0].1.as_str(), "tok");
        // The same secret for another host: refused before anything is planned.
        let raw = format!(
            "GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\nProxy-Tokenizer: {sealed}\r\n\r\n"
        );
        let mut s = session(raw.as_bytes()).await;
        let mut ctx = t.new_ctx();
        let e = t.request_filter(&mut s, &mut ctx).await.unwrap_err();
        assert_eq!(e.etype(), &ErrorType::HTTPStatus(400));
        assert!(ctx.headers.is_empty());
        // No secret at all: not an open proxy.
        let mut s =
            session(b"GET http://api.github.com/ HTTP/1.1\r\nHost: api.github.com\r\n\r\n").await;
        let e = t
            .request_filter(&mut s, &mut t.new_ctx())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not an open proxy"), "{e}");
    }
}
