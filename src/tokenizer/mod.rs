//! The tokenizer program (`proxypilot tokenizer`): an HTTP forward proxy compatible with the
//! reference tokenizer's wire protocol, which opens sealed secrets and injects the real
//! credentials on the way to the API.
//!
//! Owns: its configuration ([`config`]), its proxy phases ([`proxy`]) and the protocol pieces
//! only it uses: who may use a secret ([`authorize`]), what a secret does to a request
//! ([`processor`]) and Fly-Src ([`flysrc`]). Shared with the sidecar: `secret`, `sealing`,
//! `host`, `resolve`, `trust`, `reply`.
//! Must not: import the sidecar.

pub mod authorize;
pub mod config;
pub mod flysrc;
pub mod processor;
pub mod proxy;

use pingora_core::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;

pub use config::Settings;
pub use proxy::{Tokenizer, HEADER};

use crate::timeouts;

/// Start the tokenizer and serve until a signal stops it.
pub fn run(settings: Settings, opt: Opt) -> ! {
    let mut conf = ServerConf {
        threads: settings.threads.max(1),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    conf.upstream_keepalive_pool_size = 256;
    conf.fast_timeout_to_tokio_threshold_seconds = Some(timeouts::FAST_TIMER_MAX_SECS);
    let listen = settings.listen.clone();
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    let mut svc = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Tokenizer::new(settings),
        "proxypilot tokenizer",
    );
    // No read buffer under pingora's own: it reads headers into its header buffer and bodies
    // into its body buffer directly, and an idle keep-alive connection then holds neither.
    // Pingora's default (64 KiB) would cost 64 MiB for 1000 idle connections.
    for addr in &listen {
        svc.add_listener(
            ListenerConfig::tcp(addr.as_str())
                .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE)),
        );
    }
    server.add_service(svc);
    server.add_service(crate::memory::service());
    server.run_forever()
}
