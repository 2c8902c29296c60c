//! proxypilot: a sidecar that lets untrusted code call APIs with dummy credentials.
//!
//! The shell's clients speak TLS to the sidecar (certificates minted per SNI from its own CA);
//! the sidecar drops the dummy credential and forwards each request through a tokenizer that
//! opens a sealed secret and injects the real one. See README.md for the picture.

mod authorize;
mod ca;
mod certstore;
mod cli;
mod config;
mod flysrc;
mod memory;
mod metrics;
mod processor;
mod proxy;
mod reply;
mod resolve;
mod sealing;
mod secret;
mod spares;
mod tokenizer;

fn main() {
    // Allocator settings first, before any thread exists (arenas are made per thread).
    memory::tune();
    env_logger::Builder::from_env(
        env_logger::Env::default()
            // pingora_core::connectors only logs a harmless pool race at ERROR; our own lines
            // report every upstream failure with its reason.
            .default_filter_or(
                "info,pingora_core=warn,pingora_proxy=warn,pingora=warn,pingora_core::connectors=off",
            ),
    )
    .format_timestamp_millis()
    .init();
    std::process::exit(cli::main());
}
