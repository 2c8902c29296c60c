//! The sidecar program (`proxypilot serve`): TLS in with certificates minted per SNI from its
//! own CA, each request forwarded through the tokenizer with the route's sealed secret.
//!
//! Owns: its configuration ([`config`]), its CA ([`ca`]) and the minting cache behind the TLS
//! callback ([`certstore`]), its client connections' limits ([`conn`]), its proxy phases
//! ([`proxy`]), pre-connected tokenizer connections ([`spares`]) and [`metrics`]. This file is
//! the startup story: load or create the CA, build the listeners, serve. Shared with the
//! tokenizer: `secret`, `sealing`, `host`, `resolve`, `trust`, `reply`.
//! Must not: import the tokenizer.

pub mod ca;
pub mod certstore;
pub mod config;
pub mod conn;
pub mod forward;
pub mod metrics;
pub mod proxy;
pub mod spares;

use openssl::ssl::{select_next_proto, AlpnError, SslAcceptor, SslAcceptorBuilder, SslMethod};
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use std::sync::Arc;

use certstore::{CertStore, TlsCallbacks};
use config::Sidecar;
use conn::{GuardedApp, Limits};
use proxy::SidecarProxy;

/// Load (or create) the CA, then listen and serve until a signal stops the process.
pub fn serve(cfg: Sidecar, opt: Opt, conf: ServerConf, recreate_ca: bool) -> Result<(), String> {
    let hosts = cfg.hosts();
    if opt.test {
        // Check only: never create or replace files.
        if cfg.ca.cert.exists() || cfg.ca.key.exists() {
            let ca = ca::Ca::load(&cfg.ca.cert, &cfg.ca.key)?;
            if let Some(bad) = hosts.iter().find(|h| !ca.permits(h)) {
                return Err(format!(
                    "CA {} does not permit {bad} (run `proxypilot ca init --force`)",
                    cfg.ca.cert.display()
                ));
            }
        }
        println!("{}: configuration OK ({} routes)", cfg.source, hosts.len());
        return Ok(());
    }
    let (ca, _created) = cfg.ca.load_or_create(&hosts, recreate_ca)?;
    let store = Arc::new(CertStore::new(
        Arc::new(ca),
        &hosts,
        cfg.leaf_lifetime,
        1024,
    ));
    let roots = if cfg.tokenizer.tls {
        Some(Arc::new(
            crate::trust::upstream_roots(&cfg.tokenizer.ca).into_boxed_slice(),
        ))
    } else {
        None
    };
    let listen = cfg.listen.clone();
    let proxy_listen = cfg
        .proxy
        .as_ref()
        .map(|p| p.listen.clone())
        .unwrap_or_default();
    if !opt.upgrade {
        // Pingora binds in its listener threads, where a failure is a panic after startup has
        // been reported: try each address here first, so that a port in use or a missing
        // permission is a clear error and a non-zero exit before anything listens. (With -u the
        // addresses are in use by the process being replaced, on purpose.)
        for addr in listen.iter().chain(&proxy_listen) {
            std::net::TcpListener::bind(addr.as_str()).map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (ports below 1024 need root, CAP_NET_BIND_SERVICE or \
                     net.ipv4.ip_unprivileged_port_start)"
                } else {
                    ""
                };
                format!("cannot listen on {addr}: {e}{hint}")
            })?;
        }
    }
    let limits = Arc::new(Limits::new(
        cfg.client.max_connections,
        cfg.client.header_timeout,
        cfg.client.idle_timeout,
    ));
    let mut tls_per_addr = Vec::new();
    for addr in &listen {
        let mut tls = TlsSettings::with_callbacks(Box::new(TlsCallbacks {
            store: store.clone(),
            limits: limits.clone(),
            pin: None,
        }))
        .map_err(|e| format!("TLS settings for {addr}: {e}"))?;
        tls.enable_h2();
        tls_options(&mut tls).map_err(|e| format!("TLS settings for {addr}: {e}"))?;
        tls_per_addr.push((addr.clone(), tls));
    }
    let cfg = Arc::new(cfg);
    println!(
        "proxypilot sidecar: listening on {} for {} -> tokenizer {}; CA {} (also at https://localhost:{}/ca-cert.pem)",
        listen.join(", "),
        hosts.join(", "),
        cfg.tokenizer.url,
        cfg.ca.cert.display(),
        listen[0].rsplit(':').next().unwrap_or("443"),
    );
    if let Some(p) = &cfg.proxy {
        println!(
            "proxypilot sidecar: proxy (CONNECT) listener on {}{}; clients set HTTPS_PROXY=http://{}",
            p.listen.join(", "),
            if p.password.is_some() { " with a password" } else { "" },
            p.listen[0],
        );
    }

    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    let idle = cfg.client.idle_timeout;
    let mut proxy = pingora_proxy::http_proxy(
        &server.configuration,
        SidecarProxy::new(cfg.clone(), limits.clone(), store.clone(), roots),
    );
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(idle);
    proxy.server_options = Some(options);
    let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(conn::MAX_HEADER_BYTES as u32);
    proxy.h2_options = Some(h2);
    // Every client stream goes through the connection guard (header and idle deadlines).
    let proxy = Arc::new(proxy);
    let app = GuardedApp {
        app: proxy.clone(),
        limits: limits.clone(),
    };
    if !proxy_listen.is_empty() {
        // The CONNECT listener: plain TCP; what it intercepts goes to the same HTTP proxy.
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
            .map_err(|e| format!("TLS settings for the proxy listener: {e}"))?;
        acceptor.set_alpn_select_callback(|_, client| {
            select_next_proto(b"\x02h2\x08http/1.1", client).ok_or(AlpnError::NOACK)
        });
        tls_options(&mut acceptor)
            .map_err(|e| format!("TLS settings for the proxy listener: {e}"))?;
        let forward = forward::ForwardApp {
            cfg: cfg.clone(),
            store,
            limits: limits.clone(),
            acceptor: acceptor.build(),
            http: Arc::new(GuardedApp {
                app: proxy,
                limits: limits.clone(),
            }),
        };
        let mut svc = Service::new("proxypilot proxy listener".to_string(), forward);
        for addr in &proxy_listen {
            svc.add_listener(
                ListenerConfig::tcp(addr.as_str())
                    .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE)),
            );
        }
        server.add_service(svc);
    }
    let mut svc = Service::new("proxypilot sidecar".to_string(), app);
    svc.endpoints()
        .set_pre_tls_callback(Arc::new(conn::HelloDeadline(limits.clone())));
    for (addr, tls) in tls_per_addr {
        svc.add_listener(
            ListenerConfig::tcp(addr)
                .tls(tls)
                .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE)),
        );
    }
    server.add_service(svc);
    server.add_service(crate::memory::service());
    server.run_forever()
}

/// The TLS settings both listeners share (ALPN aside).
fn tls_options(b: &mut SslAcceptorBuilder) -> Result<(), openssl::error::ErrorStack> {
    // TLS 1.2 and 1.3 only (pingora's default too; stated here so it cannot drift).
    b.set_min_proto_version(Some(openssl::ssl::SslVersion::TLS1_2))?;
    // Idle keep-alive connections give their TLS read/write buffers back (~34 KiB each).
    b.set_mode(openssl::ssl::SslMode::RELEASE_BUFFERS);
    // OpenSSL buffers the socket itself (one read fetches whatever has arrived, up to a
    // record), so the TCP layer below it needs no read buffer of its own: that buffer would
    // stay allocated on every idle connection, where OpenSSL's is released when drained.
    b.set_read_ahead(true);
    b.set_num_tickets(NUM_TICKETS)
}

/// TLS 1.3 session tickets sent after each full handshake: one lets a client resume. OpenSSL
/// sends two by default, each one more ticket to encrypt and write per handshake.
const NUM_TICKETS: usize = 1;
