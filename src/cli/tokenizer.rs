//! `proxypilot tokenizer`: run a tokenizer, configured like the reference (same environment
//! variable names) plus options for tests and local setups.

use clap::{ArgAction, Args};
use std::path::PathBuf;

use super::{go_bool, read_open_key};
use crate::tokenizer::config::{Raw, Settings};
use crate::tokenizer::flysrc::{DEFAULT_PUBKEY_PATH, DEFAULT_TRUSTED_NET};

/// Run a tokenizer compatible with the reference wire protocol (OPEN_KEY from the environment).
#[derive(Args)]
pub struct TokenizerArgs {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Read OPEN_KEY from this file instead of the environment.
    #[arg(long)]
    pub open_key_file: Option<PathBuf>,
    /// Comma-separated headers removed from every request (besides Proxy-Tokenizer and
    /// Proxy-Authorization).
    #[arg(long, env = "FILTERED_HEADERS", value_delimiter = ',')]
    pub filtered_headers: Vec<String>,
    /// Allow requests that carry no sealed secret.
    #[arg(long, env = "OPEN_PROXY", action = ArgAction::SetTrue, value_parser = go_bool)]
    pub open_proxy: bool,
    /// Verify Fly-Src headers (needs the key in --fly-src-pubkey).
    #[arg(long, env = "USE_FLYSRC", action = ArgAction::SetTrue, value_parser = go_bool)]
    pub use_fly_src: bool,
    /// Refuse requests without a valid Fly-Src (implies --use-fly-src).
    #[arg(long, env = "REQUIRE_FLYSRC", action = ArgAction::SetTrue, value_parser = go_bool)]
    pub require_fly_src: bool,
    /// Comma-separated names and addresses of this tokenizer (origin-form requests for them are
    /// refused as circular).
    #[arg(long, env = "TOKENIZER_HOSTNAMES", value_delimiter = ',')]
    pub hostnames: Vec<String>,
    /// The ed25519 public key (hex) that signs Fly-Src.
    #[arg(long, default_value = DEFAULT_PUBKEY_PATH)]
    pub fly_src_pubkey: PathBuf,
    /// Networks Fly-Src is trusted from (repeatable).
    #[arg(long = "fly-src-trusted-net", default_value = DEFAULT_TRUSTED_NET)]
    pub fly_src_trusted_net: Vec<String>,
    /// Extra CA file trusted for upstream TLS, besides the system store (repeatable).
    #[arg(long)]
    pub upstream_ca: Vec<PathBuf>,
    /// HOST:PORT:ADDR:PORT2 — a request for HOST:PORT (the port dialled, 443 for plain
    /// http://HOST/) dials ADDR:PORT2 but keeps HOST for SNI, certificate check and Host.
    /// Pinned addresses skip the private-address guard (repeatable).
    #[arg(long)]
    pub connect_to: Vec<String>,
    /// Longest wait for a read from the upstream (e.g. between streamed events).
    #[arg(long, default_value = "10m")]
    pub read_timeout: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Close every client connection after its response, as the reference tokenizer does
    /// (for comparisons; keep-alive is faster).
    #[arg(long)]
    pub close_connections: bool,
}

pub fn run(a: TokenizerArgs) -> Result<(), String> {
    let settings = Settings::from_raw(Raw {
        open_key: read_open_key(a.open_key_file.as_ref())?,
        listen: a.listen,
        filtered_headers: a.filtered_headers,
        open_proxy: a.open_proxy,
        use_fly_src: a.use_fly_src,
        require_fly_src: a.require_fly_src,
        hostnames: a.hostnames,
        fly_src_pubkey: a.fly_src_pubkey,
        fly_src_trusted_net: a.fly_src_trusted_net,
        upstream_ca: a.upstream_ca,
        connect_to: a.connect_to,
        read_timeout: a.read_timeout,
        threads: a.threads,
        close_connections: a.close_connections,
    })?;
    println!(
        "proxypilot tokenizer: listening on {} seal_key={}",
        settings.listen.join(", "),
        settings.open_key.seal_key().to_hex()
    );
    crate::tokenizer::run(settings, Default::default())
}
