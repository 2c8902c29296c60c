//! The sidecar proxy: TLS in with a minted certificate, through the tokenizer, response out.
//!
//! Owns: the per-request path of `proxypilot serve`, for both listeners. The route is chosen
//! once, from the host the connection is pinned to: the TLS server name (SNI), or in a CONNECT
//! tunnel the CONNECT target (`forward.rs`; an SNI naming another host gets 421). The request
//! must name the same host (HTTP/1 `Host`, HTTP/2 `:authority`) or it gets 421 and nothing is
//! forwarded. The client's dummy credentials and any
//! tokenizer-protocol headers it sent are removed, the route's sealed secret is added as
//! `Proxy-Tokenizer`, and the request goes to the tokenizer as an absolute-form
//! `http://HOST/path` over a pooled HTTP/1.1 connection. `https://localhost:PORT/` answers
//! locally (CA certificate, health, metrics).
//!
//! Phases, in the order a request meets them:
//! ```text
//! request_filter          SNI + Host pinning -> route (stored in ctx), or 421; localhost answers;
//!                         the route's method/path policy (reading a GraphQL body if a rule
//!                         names operation types), or 403 naming the rule
//! upstream_peer           the tokenizer (address resolved asynchronously, cached)
//! upstream_request_filter strip client credentials, absolute-form target, Host, Proxy-Tokenizer
//! fail_to_proxy           the one error path: status + short reason
//! logging                 one line per request, metrics
//! ```
//! Must not: forward a request whose Host differs from the SNI, forward the client's own
//! credentials, or log a sealed secret.

use async_trait::async_trait;
use bytes::Bytes;
use openssl::x509::X509;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::authority::{raw_target_authority, RawTargetAuthority};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::certstore::CertStore;
use super::config::{AccessLog, Route, Sidecar};
use super::conn::{self, Limits};
use super::metrics;
use super::spares::{Spares, TlsTo};
use crate::host::Authority;
use crate::policy::GRAPHQL_BODY_LIMIT;
use crate::reply::{self, read_whole_body, refuse};
use crate::resolve::CachedName;
use crate::timeouts;

pub struct SidecarProxy {
    cfg: Arc<Sidecar>,
    limits: Arc<Limits>,
    store: Arc<CertStore>,
    tokenizer_addr: CachedName,
    /// Roots for an https:// tokenizer.
    roots: Option<Arc<Box<[X509]>>>,
    /// Pre-connected connections to the tokenizer, when configured.
    spares: Option<Arc<Spares>>,
}

#[derive(Default)]
pub struct Ctx {
    route: Option<Arc<Route>>,
    admin: bool,
    started: Option<Instant>,
    reason: Option<String>,
    /// Whether the tokenizer connection was new or reused from the pool (None: none used).
    tokenizer_reused: Option<bool>,
}

/// The first host a request names for its target that is not `sni`, if any. Named are the
/// URI authority (HTTP/2 `:authority`, or an absolute-form HTTP/1 target) and every Host
/// header, each parsed strictly and normalized before it is compared; one that cannot be parsed
/// is a 400, and so is a request that names no host.
fn other_named_host(req: &RequestHeader, sni: &str) -> Result<Option<String>> {
    let other = |text: &[u8], what: &str| -> Result<Option<String>> {
        if text == sni.as_bytes() {
            // The common case, and already normalized: nothing to parse or allocate.
            return Ok(None);
        }
        let text = std::str::from_utf8(text).map_err(|_| {
            Error::explain(ErrorType::HTTPStatus(400), format!("{what} is not text"))
        })?;
        let host = Authority::parse(text)
            .map(|a| a.host)
            .map_err(|e| Error::explain(ErrorType::HTTPStatus(400), format!("{what}: {e}")))?;
        Ok((host != sni).then_some(host))
    };
    let mut named = false;
    let mut first_other = None;
    let mut check = |text: &[u8], what: &str| -> Result<()> {
        named = true;
        let o = other(text, what)?;
        if first_other.is_none() {
            first_other = o;
        }
        Ok(())
    };
    if let Some(a) = req.uri.authority() {
        check(a.as_str().as_bytes(), "request authority")?;
    }
    match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::Absolute { authority, .. } => check(authority, "request target")?,
        RawTargetAuthority::AmbiguousAuthority => return refuse(400, "ambiguous request target"),
        RawTargetAuthority::None => {}
    }
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    if let Some(h) = hosts.next() {
        if hosts.next().is_some() {
            return refuse(400, "more than one Host header");
        }
        check(h.as_bytes(), "Host")?;
    }
    if !named {
        return refuse(400, "missing Host header");
    }
    Ok(first_other)
}

impl SidecarProxy {
    pub fn new(
        cfg: Arc<Sidecar>,
        limits: Arc<Limits>,
        store: Arc<CertStore>,
        roots: Option<Arc<Box<[X509]>>>,
    ) -> Self {
        let tokenizer_addr = CachedName::new(
            &cfg.tokenizer.host,
            cfg.tokenizer.port,
            Duration::from_secs(30),
        );
        let t = &cfg.tokenizer;
        let spares = (t.spares > 0).then(|| {
            let tls = t.tls.then(|| {
                TlsTo::new(&t.host, roots.as_deref().map_or(&[][..], |r| &r[..]))
                    .expect("TLS client context for the tokenizer")
            });
            Arc::new(Spares::new(
                t.spares,
                t.spare_max_age,
                t.connect_timeout,
                tls,
            ))
        });
        SidecarProxy {
            cfg,
            limits,
            store,
            tokenizer_addr,
            roots,
            spares,
        }
    }

    /// Answers for `https://localhost:PORT/...`: the CA certificate, health, metrics.
    async fn admin(&self, session: &mut Session) -> Result<()> {
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        if method != http::Method::GET && method != http::Method::HEAD {
            reply::send_error(session, 405, "only GET and HEAD here").await;
            return Ok(());
        }
        match path.as_str() {
            "/ca-cert.pem" | "/ca.pem" => {
                let pem = Bytes::from(self.store.ca().cert_pem.clone());
                reply::send(
                    session,
                    200,
                    "application/x-pem-file",
                    pem,
                    &[("Content-Disposition", "attachment; filename=\"ca.pem\"")],
                )
                .await
            }
            "/healthz" => reply::send(session, 200, "text/plain", Bytes::from("ok\n"), &[]).await,
            "/metrics" => {
                let body = Bytes::from(metrics::render());
                reply::send(session, 200, "text/plain; version=0.0.4", body, &[]).await
            }
            "/routes" => {
                // Host names only (never a secret): what the shell's trust bootstrap needs for
                // its hosts entries and self-test.
                let body = serde_json::json!({ "routes": self.cfg.hosts() }).to_string() + "\n";
                reply::send(session, 200, "application/json", Bytes::from(body), &[]).await
            }
            _ => {
                reply::send_error(
                    session,
                    404,
                    "not found (try /ca-cert.pem, /routes, /healthz, /metrics)",
                )
                .await;
                Ok(())
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for SidecarProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Some(Instant::now()),
            ..Default::default()
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // The header is complete: the connection's header deadline no longer applies.
        if let Some(state) = conn::state_of(session.digest().and_then(|d| d.ssl_digest.as_ref())) {
            state.request_started();
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let state = conn::state_of(session.digest().and_then(|d| d.ssl_digest.as_ref()));
        let Some(state) = state else {
            return refuse(
                421,
                "Misdirected Request: no TLS server name on this connection",
            );
        };
        if let Some(why) = &state.misdirected {
            metrics::MISDIRECTED.inc();
            return refuse(421, why.clone());
        }
        let (sni, admitted) = (state.sni.clone(), state.admitted());
        if !admitted {
            session.set_keepalive(None);
            return refuse(
                503,
                format!(
                    "too many connections to the sidecar (max_connections {}); try again shortly",
                    self.limits.max_connections
                ),
            );
        }
        if session.get_keepalive().is_some() {
            // Keep-alive without a pingora timer of its own: the connection guard
            // (`conn::Guarded`) already ends an idle HTTP/1 connection after
            // `client_idle_timeout` and bounds the next header by `client_header_timeout`. A
            // pingora keep-alive timeout is one more timer (over 30 s, a tokio one: allocated,
            // registered and cancelled) for every request.
            session.set_keepalive(Some(0));
        }
        let method = &session.req_header().method;
        if method == http::Method::CONNECT {
            return refuse(
                405,
                "CONNECT is not served here: it is for the proxy listener (proxy_listen)",
            );
        }
        if ["TRACE", "TRACK"]
            .iter()
            .any(|m| method.as_str().eq_ignore_ascii_case(m))
        {
            // An upstream answering TRACE echoes the request, injected credential included;
            // methods are case-sensitive, but a lenient upstream may take `trace` for TRACE.
            return refuse(
                405,
                "TRACE is not allowed: it would echo the credential back",
            );
        }
        let raw = session.req_header().raw_path();
        let absolute = matches!(
            raw_target_authority(raw),
            RawTargetAuthority::Absolute { .. }
        );
        if !raw.starts_with(b"/") && !absolute {
            // `*` (OPTIONS) or an authority-form target: nothing to forward to a routed path.
            return refuse(400, "request target must be a path starting with /");
        }
        if let Some(name) = other_named_host(session.req_header(), &sni)? {
            metrics::MISDIRECTED.inc();
            return refuse(
                421,
                format!(
                    "Misdirected Request: host {name:?} does not match the TLS server name {sni:?}"
                ),
            );
        }
        if sni == "localhost" {
            ctx.admin = true;
            self.admin(session).await?;
            return Ok(true);
        }
        match self.cfg.routes.get(&sni) {
            Some(route) => {
                ctx.route = Some(route.clone());
                if let Some(policy) = &route.policy {
                    // The path judged is the one forwarded (upstream_request_filter).
                    let req = session.req_header();
                    let body = if policy.needs_body(req.method.as_str(), req.uri.path()) {
                        let why = "for the route's GraphQL rules";
                        Some(read_whole_body(session, GRAPHQL_BODY_LIMIT, why).await?)
                    } else {
                        None
                    };
                    let req = session.req_header();
                    if let Err(r) =
                        policy.check(req.method.as_str(), req.uri.path(), body.as_deref())
                    {
                        metrics::POLICY_REFUSED
                            .with_label_values(&[&route.host, &r.label])
                            .inc();
                        return refuse(r.status, r.reason);
                    }
                }
                Ok(false)
            }
            None => refuse(421, format!("Misdirected Request: {sni:?} is not routed")),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let t = &self.cfg.tokenizer;
        let addr = self.tokenizer_addr.get().await.map_err(|e| {
            Error::explain(
                ErrorType::HTTPStatus(502),
                format!("tokenizer {}: {e}", t.url),
            )
        })?;
        // With spares the TLS to an https:// tokenizer is made by `Spares`, so for pingora the
        // peer speaks plain HTTP over the stream it is handed.
        let pingora_tls = t.tls && self.spares.is_none();
        let sni = if pingora_tls {
            t.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, pingora_tls, sni);
        let o = &mut peer.options;
        o.alpn = ALPN::H1;
        o.connection_timeout = Some(t.connect_timeout);
        o.total_connection_timeout = Some(t.connect_timeout * 2);
        o.read_timeout = Some(self.cfg.read_timeout);
        o.write_timeout = Some(self.cfg.read_timeout);
        // Below the tokenizer's keep-alive so a pooled connection is not closed under a request.
        o.idle_timeout = Some(timeouts::SIDECAR_POOL_IDLE);
        if pingora_tls {
            o.ca = self.roots.clone();
        }
        if let Some(spares) = &self.spares {
            o.custom_l4 = Some(spares.clone());
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let route = ctx.route.as_ref().expect("request_filter sets the route");
        for h in &route.strip {
            // Most requests carry one of these at most: look before removing (a removal also
            // searches pingora's case-preserving name map).
            if req.headers.contains_key(h) {
                req.remove_header(h);
            }
        }
        let pq = req
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| p.starts_with('/'))
            .unwrap_or("/");
        let target = format!("http://{}{}", route.host, pq);
        req.set_raw_path(target.as_bytes())?;
        req.insert_header(http::header::HOST, route.host_header.clone())?;
        req.insert_header("Proxy-Tokenizer", route.proxy_tokenizer.clone())?;
        let t = &self.cfg.tokenizer;
        if let Some(auth) = &t.proxy_authorization {
            req.insert_header(http::header::PROXY_AUTHORIZATION, auth.clone())?;
        }
        if t.fly_src_optin {
            req.insert_header("Fly-Src-Optin", "*")?;
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.tokenizer_reused = Some(reused);
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        reply::no_empty_last_chunk(body, end_of_stream);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        reply::drop_length_where_forbidden(resp);
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let what = format!("tokenizer {}", self.cfg.tokenizer.url);
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
        if let Some(state) = conn::state_of(session.digest().and_then(|d| d.ssl_digest.as_ref())) {
            state.request_done();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let route = match (&ctx.route, ctx.admin) {
            (Some(r), _) => r.host.as_str(),
            (None, true) => "localhost",
            (None, false) => "-",
        };
        let secs = ctx
            .started
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let code = http::StatusCode::from_u16(status).ok();
        let code = code.as_ref().map_or("0", |c| c.as_str());
        metrics::REQUESTS.with_label_values(&[route, code]).inc();
        metrics::REQUEST_SECONDS
            .with_label_values(&[route])
            .observe(secs);
        if self.cfg.access_log == AccessLog::Json {
            access_json(session, ctx, route, status, secs);
            return;
        }
        let level = if status == 101 || (200..400).contains(&status) || ctx.admin {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        if !log::log_enabled!(level) {
            return;
        }
        let req = session.req_header();
        let reason = ctx
            .reason
            .as_ref()
            .map(|r| format!(" reason={r:?}"))
            .unwrap_or_default();
        log::log!(
            level,
            "{} {}{} {:?} status={} dur_ms={:.1}{}",
            req.method,
            route,
            req.uri.path(),
            req.version,
            status,
            secs * 1000.0,
            reason
        );
    }
}

/// One JSON object per request on stdout: no query string, no header value, so no credential
/// and no sealed secret can be in it.
fn access_json(session: &Session, ctx: &Ctx, route: &str, status: u16, secs: f64) {
    use std::io::Write;
    let req = session.req_header();
    let line = serde_json::json!({
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "route": route,
        "method": req.method.as_str(),
        "path": req.uri.path(),
        "protocol": format!("{:?}", req.version),
        "status": status,
        "bytes": session.body_bytes_sent(),
        "duration_ms": (secs * 1e6).round() / 1e3,
        "tokenizer_connection": ctx.tokenizer_reused.map(|r| if r { "reused" } else { "new" }),
        "reason": ctx.reason,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_named_by_h1_and_h2_requests() {
        let sni = "api.github.com";
        let mut h1 = RequestHeader::build("GET", b"/user", None).unwrap();
        h1.insert_header("Host", "api.github.com").unwrap();
        assert_eq!(other_named_host(&h1, sni).unwrap(), None);
        // Parsed and normalized before the comparison: a port, upper case, a trailing dot.
        for same in ["api.github.com:8443", "API.GitHub.COM", "api.github.com."] {
            let mut r = RequestHeader::build("GET", b"/user", None).unwrap();
            r.insert_header("Host", same).unwrap();
            assert_eq!(other_named_host(&r, sni).unwrap(), None, "{same}");
        }
        let mut abs = RequestHeader::build("GET", b"https://api.github.com/user", None).unwrap();
        abs.insert_header("Host", "evil.example.com").unwrap();
        assert_eq!(
            other_named_host(&abs, sni).unwrap().as_deref(),
            Some("evil.example.com")
        );
        let mut target = RequestHeader::build("GET", b"https://Evil.example/user", None).unwrap();
        target.insert_header("Host", "api.github.com").unwrap();
        assert_eq!(
            other_named_host(&target, sni).unwrap().as_deref(),
            Some("evil.example")
        );
        let mut bogus = RequestHeader::build("GET", b"/user", None).unwrap();
        bogus
            .insert_header("Host", "api.github.com:1.evil.example")
            .unwrap();
        assert!(other_named_host(&bogus, sni).is_err());
        // An unparseable name is a 400 even after one that differs.
        let mut both = RequestHeader::build("GET", b"https://evil.example/", None).unwrap();
        both.insert_header("Host", "api.github.com:x").unwrap();
        assert!(other_named_host(&both, sni).is_err());
        let none = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(other_named_host(&none, sni).is_err());
        let mut two = RequestHeader::build("GET", b"/", None).unwrap();
        two.append_header("Host", sni).unwrap();
        two.append_header("Host", sni).unwrap();
        assert!(other_named_host(&two, sni).is_err());
    }
}
