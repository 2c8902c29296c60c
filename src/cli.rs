//! The `proxypilot` command line: one subcommand per job, each a thin shell over a module.
//!
//! Owns: argument and environment parsing (clap), reading secrets from stdin, env vars or
//! files (never from argv), and turning every failure into one message and a non-zero exit.
//! Must not: accept a real token on the command line, or print one unless asked
//! (`unseal --show-secret`, `keygen` without `--out`).

use clap::{ArgAction, Args, Parser, Subcommand};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::PathBuf;
use zeroize::Zeroizing;

use crate::ca::{Ca, CaFiles};
use crate::config;
use crate::flysrc::{Verifier25519, DEFAULT_PUBKEY_PATH, DEFAULT_TRUSTED_NET};
use crate::sealing::{OpenKey, SealKey};
use crate::secret::{
    B64Bytes, BearerAuth, FlySrcAuth, FmtArg, FmtDst, InjectProcessor, NoAuth, Secret, SecretError,
};
use crate::tokenizer;

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
    Serve(ServeArgs),
    /// Run a tokenizer compatible with the reference wire protocol (OPEN_KEY from the environment).
    Tokenizer(TokenizerArgs),
    /// Seal a secret for a tokenizer (SEAL_KEY from the environment or --seal-key).
    Seal(SealArgs),
    /// Print the SEAL_KEY (public key) for the OPEN_KEY in the environment.
    Sealkey,
    /// Make a new tokenizer key pair.
    Keygen(KeygenArgs),
    /// Open a sealed secret with OPEN_KEY and print its JSON (secret values redacted).
    Unseal(UnsealArgs),
    /// Create or inspect the sidecar's certificate authority.
    #[command(subcommand)]
    Ca(CaCmd),
}

#[derive(Args)]
struct ServeArgs {
    /// Config file (pingora's keys plus a `proxypilot:` section).
    #[arg(short, long)]
    conf: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(short, long)]
    test: bool,
    /// Run in the background (pingora daemon mode).
    #[arg(short, long)]
    daemon: bool,
    /// Take over the listening sockets of a running instance (pingora graceful upgrade).
    #[arg(short, long)]
    upgrade: bool,
    /// When the routes no longer fit the CA's name constraints, make a new CA instead of refusing.
    #[arg(long)]
    recreate_ca: bool,
}

#[derive(Args)]
struct TokenizerArgs {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDRESS", default_value = "0.0.0.0:8080")]
    listen: String,
    /// Read OPEN_KEY from this file instead of the environment.
    #[arg(long)]
    open_key_file: Option<PathBuf>,
    /// Comma-separated headers removed from every request (besides Proxy-Tokenizer and
    /// Proxy-Authorization).
    #[arg(long, env = "FILTERED_HEADERS", value_delimiter = ',')]
    filtered_headers: Vec<String>,
    /// Allow requests that carry no sealed secret.
    #[arg(long, env = "OPEN_PROXY", action = ArgAction::SetTrue, value_parser = go_bool)]
    open_proxy: bool,
    /// Verify Fly-Src headers (needs the key in --fly-src-pubkey).
    #[arg(long, env = "USE_FLYSRC", action = ArgAction::SetTrue, value_parser = go_bool)]
    use_fly_src: bool,
    /// Refuse requests without a valid Fly-Src (implies --use-fly-src).
    #[arg(long, env = "REQUIRE_FLYSRC", action = ArgAction::SetTrue, value_parser = go_bool)]
    require_fly_src: bool,
    /// Comma-separated names and addresses of this tokenizer (origin-form requests for them are
    /// refused as circular).
    #[arg(long, env = "TOKENIZER_HOSTNAMES", value_delimiter = ',')]
    hostnames: Vec<String>,
    /// The ed25519 public key (hex) that signs Fly-Src.
    #[arg(long, default_value = DEFAULT_PUBKEY_PATH)]
    fly_src_pubkey: PathBuf,
    /// Networks Fly-Src is trusted from (repeatable).
    #[arg(long = "fly-src-trusted-net", default_value = DEFAULT_TRUSTED_NET)]
    fly_src_trusted_net: Vec<String>,
    /// Extra CA file trusted for upstream TLS, besides the system store (repeatable).
    #[arg(long)]
    upstream_ca: Vec<PathBuf>,
    /// HOST:PORT:ADDR:PORT2 — a request for HOST:PORT (the port dialled, 443 for plain
    /// http://HOST/) dials ADDR:PORT2 but keeps HOST for SNI, certificate check and Host.
    /// Pinned addresses skip the private-address guard (repeatable).
    #[arg(long)]
    connect_to: Vec<String>,
    /// Longest wait for a read from the upstream (e.g. between streamed events).
    #[arg(long, default_value = "10m")]
    read_timeout: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Close every client connection after its response, as the reference tokenizer does
    /// (for comparisons; keep-alive is faster).
    #[arg(long)]
    close_connections: bool,
}

#[derive(Args, Clone)]
struct SealArgs {
    /// The tokenizer's public key (hex).
    #[arg(long, env = "SEAL_KEY", hide_env_values = true)]
    seal_key: Option<String>,
    /// A complete secret as JSON (visible in `ps`; prefer --json-file).
    #[arg(long, conflicts_with_all = ["json_file", "host", "header", "fmt", "org", "app", "instance", "token_env", "auth_password_env"])]
    json: Option<String>,
    /// A file holding a complete secret as JSON (`-` for stdin).
    #[arg(long, conflicts_with_all = ["host", "header", "fmt", "org", "app", "instance", "token_env", "auth_password_env"])]
    json_file: Option<PathBuf>,
    /// Host the secret may be sent to (allowed_hosts; repeatable).
    #[arg(long)]
    host: Vec<String>,
    /// Header to put the token in (dst); default Authorization. With --header the format
    /// defaults to the bare token (%s).
    #[arg(long)]
    header: Option<String>,
    /// Format of the header value, with one %s (default "Bearer %s").
    #[arg(long)]
    fmt: Option<String>,
    /// Fly org allowed to use the secret (fly_src_auth; repeatable).
    #[arg(long)]
    org: Vec<String>,
    /// Fly app allowed to use the secret (fly_src_auth; repeatable).
    #[arg(long)]
    app: Vec<String>,
    /// Fly machine id allowed to use the secret (fly_src_auth; repeatable).
    #[arg(long)]
    instance: Vec<String>,
    /// Read the token from this environment variable instead of stdin.
    #[arg(long)]
    token_env: Option<String>,
    /// Require `Proxy-Authorization` with the password in this environment variable
    /// (bearer_auth) instead of no_auth.
    #[arg(long)]
    auth_password_env: Option<String>,
    /// Batch mode: a file of `NAME=HOST[:HEADER]` lines. Each token is read from the
    /// environment variable NAME and sealed for HOST; prints `NAME=<sealed>` lines (ready for
    /// `fly secrets import`). --org/--app/--instance/--auth-password-env apply to all.
    #[arg(long, conflicts_with_all = ["json", "json_file", "host", "header", "token_env"])]
    env_file: Option<PathBuf>,
}

#[derive(Args)]
struct KeygenArgs {
    /// Write `OPEN_KEY=...` to this file (mode 0600) and print only SEAL_KEY.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct UnsealArgs {
    /// The sealed secret (read from stdin when absent).
    sealed: Option<String>,
    /// Read OPEN_KEY from this file instead of the environment.
    #[arg(long)]
    open_key_file: Option<PathBuf>,
    /// Print secret values (tokens, keys, digests) instead of redacting them.
    #[arg(long)]
    show_secret: bool,
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create the CA, permitting only the routed hosts and localhost.
    Init(CaInitArgs),
    /// Print the CA certificate (PEM) and its name constraints.
    Show(CaShowArgs),
    /// Time minting leaf certificates with a throwaway CA (for benchmarks).
    Bench(CaBenchArgs),
}

#[derive(Args)]
struct CaBenchArgs {
    /// How many leaves to mint.
    #[arg(long, default_value_t = 1000)]
    count: usize,
}

#[derive(Args)]
struct CaInitArgs {
    /// Take the hosts and CA paths from this config file.
    #[arg(short, long)]
    conf: Option<PathBuf>,
    /// Host to permit (repeatable; instead of -c).
    #[arg(long)]
    host: Vec<String>,
    #[arg(long, default_value = "certs/ca.pem")]
    cert: PathBuf,
    #[arg(long, default_value = "certs/ca-key.pem")]
    key: PathBuf,
    /// CA lifetime.
    #[arg(long, default_value = "3650d")]
    lifetime: String,
    /// Replace an existing CA.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct CaShowArgs {
    #[arg(long, default_value = "certs/ca.pem")]
    cert: PathBuf,
}

/// A boolean as the reference tokenizer reads its environment (Go's `strconv.ParseBool`, an
/// error counting as false): only 1, t, T, TRUE, true and True turn an option on, so
/// `OPEN_PROXY=disabled` or `OPEN_PROXY=yes` leaves the open proxy off.
fn go_bool(s: &str) -> Result<bool, std::convert::Infallible> {
    Ok(matches!(s, "1" | "t" | "T" | "TRUE" | "true" | "True"))
}

/// Parse the command line and run; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Tokenizer(a) => run_tokenizer(a),
        Cmd::Seal(a) => seal(a),
        Cmd::Sealkey => sealkey(),
        Cmd::Keygen(a) => keygen(a),
        Cmd::Unseal(a) => unseal(a),
        Cmd::Ca(CaCmd::Init(a)) => ca_init(a),
        Cmd::Ca(CaCmd::Show(a)) => ca_show(a),
        Cmd::Ca(CaCmd::Bench(a)) => ca_bench(a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("proxypilot: {e}");
            1
        }
    }
}

fn serve(a: ServeArgs) -> Result<(), String> {
    let (cfg, mut conf) = match &a.conf {
        Some(path) => {
            let cfg = config::from_file(path)?;
            let conf = pingora_core::server::configuration::ServerConf::load_from_yaml(
                path.display().to_string(),
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
            (cfg, conf)
        }
        None => {
            let cfg = config::from_env(|k| std::env::var(k).ok())?;
            // One worker thread, as conf/proxy.yaml explains.
            let conf = pingora_core::server::configuration::ServerConf {
                threads: 1,
                ..Default::default()
            };
            (cfg, conf)
        }
    };
    // Pingora's default (900 s) keeps every read timeout (10 min) in its timer wheel until the
    // deadline; an explicit setting in the config file other than that default is kept.
    let default_threshold = pingora_core::server::configuration::ServerConf::default()
        .fast_timeout_to_tokio_threshold_seconds;
    if conf.fast_timeout_to_tokio_threshold_seconds == default_threshold {
        conf.fast_timeout_to_tokio_threshold_seconds = Some(tokenizer::FAST_TIMER_MAX_SECS);
    }
    // A sidecar should stop promptly: pingora waits 300 s on SIGTERM unless told otherwise.
    conf.grace_period_seconds.get_or_insert(1);
    conf.graceful_shutdown_timeout_seconds.get_or_insert(2);
    let opt = pingora_core::server::configuration::Opt {
        upgrade: a.upgrade,
        daemon: a.daemon,
        test: a.test,
        ..Default::default()
    };
    crate::proxy::serve(cfg, opt, conf, a.recreate_ca)
}

fn read_open_key(file: Option<&PathBuf>) -> Result<OpenKey, String> {
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

fn run_tokenizer(a: TokenizerArgs) -> Result<(), String> {
    let open_key = read_open_key(a.open_key_file.as_ref())?;
    let use_fly_src = a.use_fly_src || a.require_fly_src;
    let fly_src = if use_fly_src {
        let key = std::fs::read_to_string(&a.fly_src_pubkey)
            .map_err(|e| format!("--use-fly-src: reading {}: {e}", a.fly_src_pubkey.display()))?;
        let nets = tokenizer::parse_nets(&a.fly_src_trusted_net)
            .map_err(|e| format!("--fly-src-trusted-net: {e}"))?;
        Some(
            Verifier25519::new(&key, nets)
                .map_err(|e| format!("{}: {e}", a.fly_src_pubkey.display()))?,
        )
    } else {
        None
    };
    let connect_to = a
        .connect_to
        .iter()
        .map(|c| c.parse())
        .collect::<Result<Vec<_>, _>>()?;
    let filtered_headers = a
        .filtered_headers
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .map(|h| {
            http::HeaderName::from_bytes(h.as_bytes())
                .map(|n| n.as_str().to_string())
                .map_err(|_| format!("FILTERED_HEADERS: {h:?} is not a header name"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let listen = normalize_listen(&a.listen)?;
    let mut extra = Vec::new();
    for path in &a.upstream_ca {
        extra.extend(tokenizer::ca_file(path).map_err(|e| format!("--upstream-ca {e}"))?);
    }
    let roots = tokenizer::upstream_roots(&extra);
    let read_timeout =
        config::parse_duration(&a.read_timeout).map_err(|e| format!("--read-timeout: {e}"))?;
    let seal_key = open_key.seal_key().to_hex();
    let settings = tokenizer::Settings {
        open_key,
        listen: vec![listen.clone()],
        filtered_headers,
        open_proxy: a.open_proxy,
        require_fly_src: a.require_fly_src,
        fly_src,
        hostnames: a
            .hostnames
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect(),
        connect_to,
        upstream_roots: std::sync::Arc::new(roots.into_boxed_slice()),
        read_timeout,
        idle_timeout: std::time::Duration::from_secs(60),
        close_connections: a.close_connections,
        threads: a.threads,
    };
    println!("proxypilot tokenizer: listening on {listen} seal_key={seal_key}");
    tokenizer::run(
        settings,
        pingora_core::server::configuration::Opt::default(),
    )
}

/// Accept Go-style `:8080` as well as `host:port`.
fn normalize_listen(addr: &str) -> Result<String, String> {
    let a = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    a.parse::<std::net::SocketAddr>()
        .map_err(|_| format!("LISTEN_ADDRESS {addr:?} is not an address like 0.0.0.0:8080"))?;
    Ok(a)
}

fn read_stdin(what: &str) -> Result<Zeroizing<String>, String> {
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

fn env_secret(name: &str) -> Result<Zeroizing<String>, String> {
    let v = Zeroizing::new(
        std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?,
    );
    if v.trim().is_empty() {
        return Err(format!("environment variable {name} is empty"));
    }
    Ok(Zeroizing::new(v.trim().to_string()))
}

/// Build a secret from `seal` flags and a token.
fn secret_from_flags(a: &SealArgs, token: Zeroizing<String>) -> Result<Secret, String> {
    let mut fd = FmtDst::default();
    if let Some(h) = &a.header {
        http::HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| format!("--header {h:?} is not a header name"))?;
        fd.dst = h.clone();
        fd.fmt = a.fmt.clone().unwrap_or_else(|| "%s".into());
    } else if let Some(f) = &a.fmt {
        fd.fmt = f.clone();
    }
    fd.apply_fmt(&Default::default(), FmtArg::Str("t"))
        .map_err(|_| format!("--fmt {:?}: needs exactly one %s", fd.fmt))?;
    let mut s = Secret {
        inject_processor: Some(InjectProcessor { token, fmt_dst: fd }),
        ..Default::default()
    };
    let fly = !(a.org.is_empty() && a.app.is_empty() && a.instance.is_empty());
    match (&a.auth_password_env, fly) {
        (Some(_), true) => {
            return Err("choose --auth-password-env or --org/--app/--instance, not both".into())
        }
        (Some(env), false) => {
            let pw = env_secret(env)?;
            s.bearer_auth = Some(BearerAuth {
                digest: B64Bytes(Zeroizing::new(Sha256::digest(pw.as_bytes()).to_vec())),
            });
        }
        (None, true) => {
            s.fly_src_auth = Some(FlySrcAuth {
                allowed_orgs: a.org.clone(),
                allowed_apps: a.app.clone(),
                allowed_instances: a.instance.clone(),
            })
        }
        (None, false) => s.no_auth = Some(NoAuth {}),
    }
    if !a.host.is_empty() {
        s.allowed_hosts = Some(a.host.iter().map(|h| h.to_ascii_lowercase()).collect());
    } else {
        eprintln!("proxypilot: warning: no --host: this secret may be sent to any host");
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

fn seal(a: SealArgs) -> Result<(), String> {
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

fn sealkey() -> Result<(), String> {
    let k = read_open_key(None)?;
    println!("{}", k.seal_key().to_hex());
    Ok(())
}

fn keygen(a: KeygenArgs) -> Result<(), String> {
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

/// Replace secret-bearing values in a secret's JSON with "<redacted>".
/// Replace every value of a secret that might be secret with `<redacted>`. Only fields known to
/// hold no secret keep their value (the routing and policy parts a reader needs); everything
/// else, including every field of a processor or auth this build does not know, is hidden.
fn redact(v: &mut serde_json::Value) {
    const SHOWN: &[&str] = &[
        "dst",
        "fmt",
        "allowed_dst",
        "allowed_fmt",
        "hash",
        "placeholder",
        "allowed_hosts",
        "allowed_host_pattern",
        "allowed_orgs",
        "allowed_apps",
        "allowed_instances",
        "app_id",
        "installation_id",
        "client_id",
        "email",
        "sub",
        "scopes",
        "token_url",
        "no_swap",
    ];
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if !SHOWN.contains(&k.as_str()) {
                    redact_all(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Redact every leaf under `v` except the values of `SHOWN` keys (see `redact`).
fn redact_all(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(_) => redact(v),
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_all),
        serde_json::Value::Null => {}
        other => *other = serde_json::Value::String("<redacted>".into()),
    }
}

fn unseal(a: UnsealArgs) -> Result<(), String> {
    let key = read_open_key(a.open_key_file.as_ref())?;
    let sealed = match a.sealed {
        Some(s) => Zeroizing::new(s),
        None => read_stdin("sealed secret")?,
    };
    let json = key.open(&sealed).map_err(|e| e.to_string())?;
    let mut v: serde_json::Value = serde_json::from_slice(&json)
        .map_err(|_| "the sealed secret opened but is not JSON".to_string())?;
    if !a.show_secret {
        redact(&mut v);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&v).expect("JSON value serializes")
    );
    Ok(())
}

fn ca_init(a: CaInitArgs) -> Result<(), String> {
    let lifetime = config::parse_duration(&a.lifetime).map_err(|e| format!("--lifetime: {e}"))?;
    let (hosts, files) = match &a.conf {
        Some(path) => {
            let cfg = config::from_file(path)?;
            let mut files = cfg.ca;
            files.lifetime = lifetime;
            (cfg.routes.keys().cloned().collect::<Vec<_>>(), files)
        }
        None => (
            a.host.iter().map(|h| h.to_ascii_lowercase()).collect(),
            CaFiles {
                cert: a.cert.clone(),
                key: a.key.clone(),
                lifetime,
            },
        ),
    };
    if hosts.is_empty() {
        return Err("no hosts: give -c conf/proxy.yaml or --host NAME".into());
    }
    if (files.cert.exists() || files.key.exists()) && !a.force {
        return Err(format!(
            "{} already exists; give --force to replace it (clients must then trust the new CA)",
            files.cert.display()
        ));
    }
    let ca = files.create(&hosts)?;
    print_ca(&ca, &files.cert);
    Ok(())
}

fn print_ca(ca: &Ca, path: &std::path::Path) {
    println!("{}", ca.cert_pem.trim_end());
    eprintln!("certificate: {}", path.display());
    eprintln!(
        "subject: {:?}",
        ca.x509
            .subject_name()
            .entries()
            .map(|e| String::from_utf8_lossy(e.data().as_slice()).to_string())
            .collect::<Vec<_>>()
    );
    eprintln!("valid: {} .. {}", ca.x509.not_before(), ca.x509.not_after());
    match ca.permitted() {
        Some(p) => eprintln!("name constraints (critical): permitted DNS {p:?}"),
        None => eprintln!("name constraints: none (trusted for every name!)"),
    }
}

fn ca_show(a: CaShowArgs) -> Result<(), String> {
    let pem = std::fs::read_to_string(&a.cert)
        .map_err(|e| format!("reading {}: {e}", a.cert.display()))?;
    // Showing needs no key: parse the certificate alone.
    let x509 = openssl::x509::X509::from_pem(pem.as_bytes())
        .map_err(|_| format!("{}: not a PEM certificate", a.cert.display()))?;
    println!("{}", pem.trim_end());
    eprintln!("certificate: {}", a.cert.display());
    eprintln!("valid: {} .. {}", x509.not_before(), x509.not_after());
    match crate::ca::permitted_of(&x509) {
        Some(p) => eprintln!("name constraints: permitted DNS {p:?}"),
        None => eprintln!("name constraints: none (trusted for every name!)"),
    }
    Ok(())
}

fn ca_bench(a: CaBenchArgs) -> Result<(), String> {
    let count = a.count.max(1);
    let (ca, _) = Ca::create(
        &["bench.example".into()],
        std::time::Duration::from_secs(86400),
    )?;
    let mut us: Vec<f64> = Vec::with_capacity(count);
    for _ in 0..count {
        let t = std::time::Instant::now();
        ca.mint("bench.example", std::time::Duration::from_secs(3600))?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| us[((us.len() - 1) as f64 * p).round() as usize];
    println!(
        "minted {count} leaves (ECDSA P-256 key + signature): median {:.0} us, p99 {:.0} us, min {:.0} us",
        pct(0.5),
        pct(0.99),
        us[0]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_values_not_shape() {
        let mut v: serde_json::Value = serde_json::from_str(
            r#"{"inject_processor":{"token":"ghp_x","dst":"X"},"bearer_auth":{"digest":"abc"},"allowed_hosts":["a"]}"#,
        )
        .unwrap();
        redact(&mut v);
        let s = v.to_string();
        assert!(!s.contains("ghp_x") && !s.contains("abc"), "{s}");
        assert!(
            s.contains("\"dst\":\"X\"") && s.contains("allowed_hosts"),
            "{s}"
        );
    }

    #[test]
    fn redaction_hides_every_field_of_unknown_processors() {
        let mut v: serde_json::Value = serde_json::from_str(
            r#"{"github_app_processor":{"private_key":"LS0tPEM","app_id":"42","installation_id":"7"},
                "jwt_processor":{"private_key":"UEVN","email":"a@b","scopes":"x"},
                "future_processor":{"whatever":"SECRET1","nested":{"deep":"SECRET2","list":["SECRET3",5]}},
                "oauth2_processor":{"token":{"access_token":"SECRET4","refresh_token":"SECRET5"}},
                "sigv4_processor":{"access_key":"SECRET6","secret_key":"SECRET7"},
                "client_credentials_processor":{"client_id":"cid","client_secret":"SECRET8"},
                "macaroon_auth":{"key":"SECRET9"},
                "inject_hmac_processor":{"key":"SECRETA","hash":"sha256"},
                "allowed_hosts":["api.github.com"]}"#,
        )
        .unwrap();
        redact(&mut v);
        let s = v.to_string();
        for secret in ["LS0tPEM", "UEVN", "SECRET", "5]"] {
            assert!(!s.contains(secret), "{secret} in {s}");
        }
        for shown in [
            "\"app_id\":\"42\"",
            "\"hash\":\"sha256\"",
            "api.github.com",
            "\"client_id\":\"cid\"",
        ] {
            assert!(s.contains(shown), "{shown} not in {s}");
        }
    }

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

    #[test]
    fn listen_addresses() {
        assert_eq!(normalize_listen(":8080").unwrap(), "0.0.0.0:8080");
        assert_eq!(normalize_listen("[::1]:9").unwrap(), "[::1]:9");
        assert!(normalize_listen("nope").is_err());
    }
}
