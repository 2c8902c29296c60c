//! `proxypilot seal`, `sealkey`, `keygen`, `unseal`: the tokenizer's keys and sealed secrets.
//! Tokens come from stdin or an environment variable, never from argv (where `ps` shows them).

use clap::Args;
use std::path::PathBuf;
use zeroize::Zeroizing;

use super::{env_secret, read_open_key, read_stdin};
use crate::sealing::{OpenKey, SealKey};
use crate::secret::{redact_json, SealSpec, Secret, SecretError};

#[derive(Args, Clone)]
pub struct SealArgs {
    /// The tokenizer's public key (hex).
    #[arg(long, env = "SEAL_KEY", hide_env_values = true)]
    pub seal_key: Option<String>,
    /// A complete secret as JSON (visible in `ps`; prefer --json-file).
    #[arg(long, conflicts_with_all = ["json_file", "host", "header", "fmt", "org", "app", "instance", "token_env", "auth_password_env", "allow", "deny"])]
    pub json: Option<String>,
    /// A file holding a complete secret as JSON (`-` for stdin).
    #[arg(long, conflicts_with_all = ["host", "header", "fmt", "org", "app", "instance", "token_env", "auth_password_env", "allow", "deny"])]
    pub json_file: Option<PathBuf>,
    /// Host the secret may be sent to (allowed_hosts; repeatable).
    #[arg(long)]
    pub host: Vec<String>,
    /// Header to put the token in (dst); default Authorization. With --header the format
    /// defaults to the bare token (%s).
    #[arg(long)]
    pub header: Option<String>,
    /// Format of the header value, with one %s (default "Bearer %s").
    #[arg(long)]
    pub fmt: Option<String>,
    /// Fly org allowed to use the secret (fly_src_auth; repeatable).
    #[arg(long)]
    pub org: Vec<String>,
    /// Fly app allowed to use the secret (fly_src_auth; repeatable).
    #[arg(long)]
    pub app: Vec<String>,
    /// Fly machine id allowed to use the secret (fly_src_auth; repeatable).
    #[arg(long)]
    pub instance: Vec<String>,
    /// A method/path rule the token may be used for, e.g. 'GET,HEAD /repos/**' (repeatable;
    /// with any, one must match). Enforced by proxypilot's tokenizer only: such a secret is
    /// refused by Fly's tokenizer.
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,
    /// A method/path rule the token may never be used for (repeatable; wins over --allow).
    #[arg(long, value_name = "RULE")]
    pub deny: Vec<String>,
    /// Read the token from this environment variable instead of stdin.
    #[arg(long)]
    pub token_env: Option<String>,
    /// Require `Proxy-Authorization` with the password in this environment variable
    /// (bearer_auth) instead of no_auth.
    #[arg(long)]
    pub auth_password_env: Option<String>,
    /// Batch mode: a file of `NAME=HOST[:HEADER]` lines. Each token is read from the
    /// environment variable NAME and sealed for HOST; prints `NAME=<sealed>` lines (ready for
    /// `fly secrets import`). --org/--app/--instance/--auth-password-env apply to all.
    #[arg(long, conflicts_with_all = ["json", "json_file", "host", "header", "token_env"])]
    pub env_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Write `OPEN_KEY=...` to this file (mode 0600) and print only SEAL_KEY.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct UnsealArgs {
    /// The sealed secret (read from stdin when absent).
    pub sealed: Option<String>,
    /// Read OPEN_KEY from this file instead of the environment.
    #[arg(long)]
    pub open_key_file: Option<PathBuf>,
    /// Print secret values (tokens, keys, digests) instead of redacting them.
    #[arg(long)]
    pub show_secret: bool,
}

/// The spec of a `seal` invocation (the password read from its environment variable).
fn spec(a: &SealArgs) -> Result<SealSpec, String> {
    Ok(SealSpec {
        hosts: a.host.clone(),
        header: a.header.clone(),
        fmt: a.fmt.clone(),
        orgs: a.org.clone(),
        apps: a.app.clone(),
        instances: a.instance.clone(),
        password: a.auth_password_env.as_deref().map(env_secret).transpose()?,
        allow: a.allow.clone(),
        deny: a.deny.clone(),
    })
}

/// Build a secret from `seal` flags and a token.
fn secret_from_flags(a: &SealArgs, token: Zeroizing<String>) -> Result<Secret, String> {
    let s = Secret::inject(token, &spec(a)?)?;
    if a.host.is_empty() {
        eprintln!("proxypilot: warning: no --host: this secret may be sent to any host");
    }
    if !(a.allow.is_empty() && a.deny.is_empty()) {
        eprintln!(
            "proxypilot: note: this secret carries --allow/--deny rules that only proxypilot's \
             tokenizer enforces; use it with `proxypilot tokenizer` only (Fly's tokenizer \
             refuses it: it finds no processor it knows)"
        );
    }
    Ok(s)
}

/// One line of a `seal --env-file` file: `NAME=HOST[:HEADER]`.
fn parse_env_line(line: &str) -> Result<Option<(String, String, Option<String>)>, String> {
    let line = line.trim();
    let line = line.strip_prefix("export ").unwrap_or(line).trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (name, target) = line
        .split_once('=')
        .ok_or_else(|| format!("{line:?} is not NAME=HOST[:HEADER]"))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("{name:?} is not an environment variable name"));
    }
    let (host, header) = match target.trim().split_once(':') {
        Some((h, hdr)) => (h.trim(), Some(hdr.trim().to_string())),
        None => (target.trim(), None),
    };
    let host = crate::host::check_dns_name(host).map_err(|e| format!("{name}: {e}"))?;
    if let Some(h) = &header {
        http::HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| format!("{name}: {h:?} is not a header name"))?;
    }
    Ok(Some((name.to_string(), host, header)))
}

fn seal_batch(a: &SealArgs, seal_key: &SealKey, path: &PathBuf) -> Result<(), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |e: String| format!("{}:{}: {e}", path.display(), i + 1);
        let Some((name, host, header)) = parse_env_line(line).map_err(at)? else {
            continue;
        };
        let token = env_secret(&name).map_err(at)?;
        let one = SealArgs {
            host: vec![host],
            header,
            ..a.clone()
        };
        let secret = secret_from_flags(&one, token).map_err(at)?;
        out.push(format!(
            "{name}={}",
            seal_key.seal(secret.to_json().as_bytes())
        ));
    }
    if out.is_empty() {
        return Err(format!("{}: no NAME=HOST lines", path.display()));
    }
    // Print only when every line sealed, so a partial result never reaches `fly secrets`.
    println!("{}", out.join("\n"));
    Ok(())
}

pub fn seal(a: SealArgs) -> Result<(), String> {
    let key_hex = a
        .seal_key
        .clone()
        .ok_or("SEAL_KEY is not set (give --seal-key or the SEAL_KEY environment variable)")?;
    let seal_key = SealKey::from_hex(&key_hex)?;
    if let Some(path) = &a.env_file {
        return seal_batch(&a, &seal_key, path);
    }
    let json: Zeroizing<Vec<u8>> = if let Some(j) = &a.json {
        Zeroizing::new(j.as_bytes().to_vec())
    } else if let Some(path) = &a.json_file {
        if path.as_os_str() == "-" {
            Zeroizing::new(read_stdin("secret JSON")?.as_bytes().to_vec())
        } else {
            Zeroizing::new(
                std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?,
            )
        }
    } else {
        let token = match &a.token_env {
            Some(name) => env_secret(name)?,
            None => read_stdin("token")?,
        };
        let secret = secret_from_flags(&a, token)?;
        Zeroizing::new(secret.to_json().as_bytes().to_vec())
    };
    // Refuse to seal something no tokenizer would accept. Processors only the reference
    // implements are sealed with a warning.
    let parsed = Secret::from_json(&json).map_err(|e| e.to_string())?;
    match parsed.check() {
        Ok(_) => {}
        Err(SecretError::Unsupported(m)) => {
            eprintln!("proxypilot: warning: {m}; sealing anyway for the reference tokenizer")
        }
        Err(e) => return Err(e.to_string()),
    }
    println!("{}", seal_key.seal(&json));
    Ok(())
}

pub fn sealkey() -> Result<(), String> {
    let k = read_open_key(None)?;
    println!("{}", k.seal_key().to_hex());
    Ok(())
}

pub fn keygen(a: KeygenArgs) -> Result<(), String> {
    let k = OpenKey::generate();
    let seal = k.seal_key().to_hex();
    match a.out {
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            f.write_all(format!("OPEN_KEY={}\n", k.to_hex().as_str()).as_bytes())
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            println!("SEAL_KEY={seal}");
        }
        None => {
            println!("OPEN_KEY={}", k.to_hex().as_str());
            println!("SEAL_KEY={seal}");
        }
    }
    Ok(())
}

pub fn unseal(a: UnsealArgs) -> Result<(), String> {
    let key = read_open_key(a.open_key_file.as_ref())?;
    let sealed = match a.sealed {
        Some(s) => Zeroizing::new(s),
        None => read_stdin("sealed secret")?,
    };
    let json = key.open(&sealed).map_err(|e| e.to_string())?;
    let mut v: serde_json::Value = serde_json::from_slice(&json)
        .map_err(|_| "the sealed secret opened but is not JSON".to_string())?;
    if !a.show_secret {
        redact_json(&mut v);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&v).expect("JSON value serializes")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines() {
        assert_eq!(parse_env_line("# c").unwrap(), None);
        assert_eq!(parse_env_line("  ").unwrap(), None);
        assert_eq!(
            parse_env_line("export GH_TOKEN=api.github.com").unwrap(),
            Some(("GH_TOKEN".into(), "api.github.com".into(), None))
        );
        assert_eq!(
            parse_env_line("ANTHROPIC_API_KEY=api.anthropic.com:x-api-key").unwrap(),
            Some((
                "ANTHROPIC_API_KEY".into(),
                "api.anthropic.com".into(),
                Some("x-api-key".into())
            ))
        );
        assert!(parse_env_line("GH TOKEN=x").is_err());
        assert!(parse_env_line("GH_TOKEN").is_err());
        assert!(parse_env_line("GH_TOKEN=https://x/").is_err());
    }
}
