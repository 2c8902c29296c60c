//! The `proxypilot` command line: one file per subcommand, each a thin shell over a module,
//! with its help text beside it. This file holds the dispatch and the helpers every
//! subcommand shares: reading secrets from stdin, env vars or files (never from argv), and
//! turning every failure into one message and a non-zero exit.
//! Must not: accept a real token on the command line, or print one unless asked
//! (`unseal --show-secret`, `keygen` without `--out`).

mod ca;
mod health;
mod seal;
mod serve;
mod tokenizer;

use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use zeroize::Zeroizing;

use crate::sealing::OpenKey;

#[derive(Parser)]
#[command(
    name = "proxypilot",
    version,
    about = "Sidecar proxy that lets untrusted code call APIs with dummy credentials: it \
             terminates TLS with certificates from its own CA and forwards each request \
             through a tokenizer that swaps in the real credential from a sealed secret."
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the sidecar (TLS listener, per-SNI certificates, forwarding through the tokenizer).
    /// Without -c, reads tlsproxy's environment (TARGETS, PROXY, PORT).
    Serve(serve::ServeArgs),
    /// Run a tokenizer compatible with the reference wire protocol (OPEN_KEY from the environment).
    Tokenizer(tokenizer::TokenizerArgs),
    /// Seal a secret for a tokenizer (SEAL_KEY from the environment or --seal-key).
    Seal(seal::SealArgs),
    /// Print the SEAL_KEY (public key) for the OPEN_KEY in the environment.
    Sealkey,
    /// Make a new tokenizer key pair.
    Keygen(seal::KeygenArgs),
    /// Open a sealed secret with OPEN_KEY and print its JSON (secret values redacted).
    Unseal(seal::UnsealArgs),
    /// Create or inspect the sidecar's certificate authority.
    #[command(subcommand)]
    Ca(ca::CaCmd),
    /// Check that the sidecar on this machine answers (exit 0) or say why not (exit 1), for
    /// container health checks.
    Health(health::HealthArgs),
}

/// Parse the command line and run; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve::run(a),
        Cmd::Tokenizer(a) => tokenizer::run(a),
        Cmd::Seal(a) => seal::seal(a),
        Cmd::Sealkey => seal::sealkey(),
        Cmd::Keygen(a) => seal::keygen(a),
        Cmd::Unseal(a) => seal::unseal(a),
        Cmd::Ca(ca::CaCmd::Init(a)) => ca::init(a),
        Cmd::Ca(ca::CaCmd::Show(a)) => ca::show(a),
        Cmd::Ca(ca::CaCmd::Bench(a)) => ca::bench(a),
        Cmd::Health(a) => health::run(a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("proxypilot: {e}");
            1
        }
    }
}

/// A boolean as the reference tokenizer reads its environment (Go's `strconv.ParseBool`, an
/// error counting as false): only 1, t, T, TRUE, true and True turn an option on, so
/// `OPEN_PROXY=disabled` or `OPEN_PROXY=yes` leaves the open proxy off.
pub(crate) fn go_bool(s: &str) -> Result<bool, std::convert::Infallible> {
    Ok(matches!(s, "1" | "t" | "T" | "TRUE" | "true" | "True"))
}

pub(crate) fn read_open_key(file: Option<&PathBuf>) -> Result<OpenKey, String> {
    let hex = match file {
        Some(p) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?,
            );
            let v = text.trim();
            Zeroizing::new(v.strip_prefix("OPEN_KEY=").unwrap_or(v).to_string())
        }
        None => {
            Zeroizing::new(std::env::var("OPEN_KEY").map_err(|_| {
                "OPEN_KEY is not set (make one with `proxypilot keygen`)".to_string()
            })?)
        }
    };
    OpenKey::from_hex(&hex)
}

pub(crate) fn read_stdin(what: &str) -> Result<Zeroizing<String>, String> {
    let mut s = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| format!("reading {what} from stdin: {e}"))?;
    let trimmed = Zeroizing::new(s.trim().to_string());
    if trimmed.is_empty() {
        return Err(format!("no {what} on stdin"));
    }
    Ok(trimmed)
}

pub(crate) fn env_secret(name: &str) -> Result<Zeroizing<String>, String> {
    let v = Zeroizing::new(
        std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?,
    );
    if v.trim().is_empty() {
        return Err(format!("environment variable {name} is empty"));
    }
    Ok(Zeroizing::new(v.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_read_like_go() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(go_bool(t).unwrap(), "{t}");
        }
        for f in [
            "0", "f", "false", "FALSE", "disabled", "yes", "on", "", " true", "tRUE",
        ] {
            assert!(!go_bool(f).unwrap(), "{f}");
        }
    }
}
