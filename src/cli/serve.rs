//! `proxypilot serve`: run the sidecar from a config file, or from tlsproxy's environment.

use clap::Args;
use pingora_core::server::configuration::{Opt, ServerConf};
use std::path::PathBuf;

use crate::sidecar::{self, config};
use crate::timeouts;

/// Run the sidecar (TLS listener, per-SNI certificates, forwarding through the tokenizer).
/// Without -c, reads tlsproxy's environment (TARGETS, PROXY, PORT).
#[derive(Args)]
pub struct ServeArgs {
    /// Config file (pingora's keys plus a `proxypilot:` section).
    #[arg(short, long)]
    pub conf: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(short, long)]
    pub test: bool,
    /// Run in the background (pingora daemon mode).
    #[arg(short, long)]
    pub daemon: bool,
    /// Take over the listening sockets of a running instance (pingora graceful upgrade).
    #[arg(short, long)]
    pub upgrade: bool,
    /// When the routes no longer fit the CA's name constraints, make a new CA instead of refusing.
    #[arg(long)]
    pub recreate_ca: bool,
}

pub fn run(a: ServeArgs) -> Result<(), String> {
    let (cfg, mut conf) = match &a.conf {
        Some(path) => {
            let cfg = config::from_file(path, &config::process_env)?;
            let conf = ServerConf::load_from_yaml(path.display().to_string())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            (cfg, conf)
        }
        None => {
            let cfg = config::from_env(&config::process_env)?;
            // One worker thread, as conf/proxy.yaml explains.
            let conf = ServerConf {
                threads: 1,
                ..Default::default()
            };
            (cfg, conf)
        }
    };
    // Pingora's default (900 s) keeps every read timeout (10 min) in its timer wheel until the
    // deadline; an explicit setting in the config file other than that default is kept.
    let default_threshold = ServerConf::default().fast_timeout_to_tokio_threshold_seconds;
    if conf.fast_timeout_to_tokio_threshold_seconds == default_threshold {
        conf.fast_timeout_to_tokio_threshold_seconds = Some(timeouts::FAST_TIMER_MAX_SECS);
    }
    // A sidecar should stop promptly: pingora waits 300 s on SIGTERM unless told otherwise.
    conf.grace_period_seconds.get_or_insert(1);
    conf.graceful_shutdown_timeout_seconds.get_or_insert(2);
    let opt = Opt {
        upgrade: a.upgrade,
        daemon: a.daemon,
        test: a.test,
        ..Default::default()
    };
    sidecar::serve(cfg, opt, conf, a.recreate_ca)
}
