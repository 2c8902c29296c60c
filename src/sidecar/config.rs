//! Sidecar configuration: the YAML file (or tlsproxy's environment), parsed once into runtime
//! types.
//!
//! Owns: the file format of the `proxypilot:` section (serde, unknown keys refused, errors
//! naming file, key and line), the tlsproxy drop-in environment (`TARGETS`, `PROXY`, `PORT`),
//! reading sealed secrets from env vars or files, and validation. The request path only ever
//! sees [`Sidecar`] and [`Route`].
//! Must not: print a sealed secret or a tokenizer credential, even in an error.

use http::HeaderValue;
use serde::Deserialize;

use crate::policy::Policy;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

use super::ca::CaFiles;
use super::forward::Passthrough;
use crate::host::Authority;
use crate::sealing::TokenizerHeader;

/// Headers always removed from client requests: only the sidecar may speak to the tokenizer.
pub const ALWAYS_STRIP: &[&str] = &[
    "Proxy-Tokenizer",
    "Proxy-Authorization",
    "Fly-Src",
    "Fly-Src-Signature",
];

/// Where the configuration reads environment variables: the process environment in
/// production, a map in tests (no test touches the process environment).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, as an [`Env`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Every default of the sidecar's configuration, for the file and for tlsproxy's environment.
pub mod defaults {
    use std::time::Duration;

    pub const LISTEN_PORT: u16 = 443;
    pub const CA_CERT: &str = "certs/ca.pem";
    pub const CA_KEY: &str = "certs/ca-key.pem";
    /// tlsproxy keeps its CA in the working directory.
    pub const DROPIN_CA_CERT: &str = "ca.pem";
    pub const DROPIN_CA_KEY: &str = "ca-key.pem";
    pub const CA_LIFETIME: Duration = Duration::from_secs(3650 * 86400);
    pub const CA_LIFETIME_TEXT: &str = "3650d";
    pub const LEAF_LIFETIME: Duration = Duration::from_secs(3600);
    /// Longest gap between reads from the tokenizer (server-sent events can be quiet a while).
    pub const READ_TIMEOUT: Duration = Duration::from_secs(600);
    pub const TOKENIZER: &str = "http://tokenizer.flycast";
    pub const TOKENIZER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const SPARE_MAX_AGE: Duration = Duration::from_secs(30);
    pub const CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_CONNECTIONS: usize = 4096;
    /// Headers removed from every request: the dummy credentials clients send.
    pub const STRIP: &[&str] = &["Authorization", "X-Api-Key"];
}

// ---------- file format ----------

#[derive(Deserialize)]
struct File {
    proxypilot: Option<FileSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSection {
    #[serde(default)]
    listen: Option<Vec<String>>,
    #[serde(default)]
    ca: FileCa,
    #[serde(default)]
    leaf_lifetime: Option<String>,
    #[serde(default)]
    read_timeout: Option<String>,
    /// Longest wait for a whole request header once its first byte arrived (slowloris).
    #[serde(default)]
    client_header_timeout: Option<String>,
    /// A client connection with no request in flight is closed after this long.
    #[serde(default)]
    client_idle_timeout: Option<String>,
    /// At most this many client connections at once; more get 503.
    #[serde(default)]
    max_connections: Option<usize>,
    /// `text` (one log line per request, default) or `json` (one JSON object per request on
    /// stdout, for log shippers).
    #[serde(default)]
    access_log: Option<String>,
    tokenizer: FileTokenizer,
    #[serde(default)]
    strip_headers: Option<Vec<String>>,
    routes: Vec<FileRoute>,
    /// The forward-proxy (CONNECT) listener: a port (on both loopback addresses) or a list of
    /// addresses. Off when absent.
    #[serde(default)]
    proxy_listen: Option<FileListen>,
    /// A password clients of the proxy listener must send (`Proxy-Authorization: Basic`).
    #[serde(default)]
    proxy_auth: Option<FileProxyAuth>,
    /// Unrouted hosts the proxy listener tunnels untouched (`name`, `*.suffix`, `:port`).
    #[serde(default)]
    passthrough: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileListen {
    Port(u16),
    Addresses(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProxyAuth {
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileCa {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    lifetime: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTokenizer {
    url: String,
    /// Env var holding the password for the tokenizer's bearer_auth (sent as
    /// `Proxy-Authorization: Bearer <value>`).
    auth_env: Option<String>,
    auth_file: Option<PathBuf>,
    #[serde(default)]
    fly_src_optin: bool,
    /// Connections kept open in advance for a tokenizer that closes every connection.
    #[serde(default)]
    spares: usize,
    /// How long a spare may wait before it is replaced (default 30s).
    spare_max_age: Option<String>,
    /// Longest wait for a TCP connection (and TLS handshake) to the tokenizer (default 5s).
    connect_timeout: Option<String>,
    /// Extra CA (PEM) trusted for an `https://` tokenizer, besides the system's roots.
    ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    host: String,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    strip_headers: Vec<String>,
    /// Method/path rules (`crate::policy`): with any, one must match.
    #[serde(default)]
    allow: Vec<String>,
    /// Method/path rules: a match refuses the request.
    #[serde(default)]
    deny: Vec<String>,
}

// ---------- runtime types ----------

/// Where requests go after the sidecar: the tokenizer.
pub struct Tokenizer {
    /// For messages: scheme://host:port, never a credential.
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` to send, if the tokenizer wants one.
    pub proxy_authorization: Option<HeaderValue>,
    pub fly_src_optin: bool,
    /// Pre-connected spare connections (0: off).
    pub spares: usize,
    pub spare_max_age: Duration,
    pub connect_timeout: Duration,
    /// Extra trusted CA certificates for an `https://` tokenizer (from `ca`, parsed here).
    pub ca: Vec<openssl::x509::X509>,
}

/// One routed host. Built once at start; the request path only reads it.
pub struct Route {
    pub host: String,
    /// `host` as the `Host` header value sent to the tokenizer.
    pub host_header: HeaderValue,
    /// The complete `Proxy-Tokenizer` value (marked sensitive).
    pub proxy_tokenizer: HeaderValue,
    /// Header names removed from the client's request (parsed once here, not per request).
    pub strip: Vec<http::HeaderName>,
    /// Which methods and paths may go out (None: all).
    pub policy: Option<Policy>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("host", &self.host)
            .field("proxy_tokenizer", &"<sealed>")
            .field("strip", &self.strip)
            .field("policy", &self.policy)
            .finish()
    }
}

/// How each request is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// One line per request in the process log (stderr, `RUST_LOG`).
    #[default]
    Text,
    /// One JSON object per request on stdout.
    Json,
}

/// Limits on the sidecar's client connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: defaults::CLIENT_HEADER_TIMEOUT,
            idle_timeout: defaults::CLIENT_IDLE_TIMEOUT,
            max_connections: defaults::MAX_CONNECTIONS,
        }
    }
}

/// The forward-proxy (CONNECT) listener's settings.
pub struct ProxyListener {
    pub listen: Vec<String>,
    /// The password its clients must send, if any.
    pub password: Option<Zeroizing<String>>,
    /// Unrouted hosts tunnelled without interception.
    pub passthrough: Vec<Passthrough>,
}

/// The sidecar's validated runtime configuration.
pub struct Sidecar {
    pub listen: Vec<String>,
    /// The CONNECT listener, when configured.
    pub proxy: Option<ProxyListener>,
    pub ca: CaFiles,
    pub leaf_lifetime: Duration,
    pub read_timeout: Duration,
    pub client: ClientLimits,
    pub access_log: AccessLog,
    pub tokenizer: Tokenizer,
    pub routes: HashMap<String, Arc<Route>>,
    /// Serve the CA certificate at https://localhost:PORT/ca-cert.pem (always on; kept explicit
    /// for the startup message).
    pub source: String,
}

impl Sidecar {
    pub fn hosts(&self) -> Vec<String> {
        let mut h: Vec<String> = self.routes.keys().cloned().collect();
        h.sort();
        h
    }
}

/// Where a config error was found, for messages like `conf/proxy.yaml: proxypilot.routes[1].host: ...`.
struct Where<'a> {
    source: &'a str,
}

impl Where<'_> {
    fn err(&self, key: &str, msg: impl std::fmt::Display) -> String {
        format!("{}: {key}: {msg}", self.source)
    }
}

pub use crate::timeouts::parse_duration;

/// Both loopback addresses at `port`: the shell's hosts file points the API names at both.
fn loopback_listen(port: u16) -> Vec<String> {
    vec![format!("127.0.0.1:{port}"), format!("[::1]:{port}")]
}

/// Check that a value looks like a sealed secret, without ever printing it.
fn check_sealed(value: &str) -> Result<(), String> {
    use base64::Engine;
    let v = value.trim();
    if v.is_empty() {
        return Err("is empty".into());
    }
    match base64::engine::general_purpose::STANDARD.decode(v) {
        // 32-byte ephemeral key + 16-byte tag + at least a minimal JSON object.
        Ok(b) if b.len() > 48 + 2 => Ok(()),
        _ => Err(
            "does not look like a sealed secret (base64 of a sealed box); seal the real \
                  token with `proxypilot seal` and put the output there"
                .into(),
        ),
    }
}

fn read_secret(env: Option<&str>, file: Option<&Path>, get: Env) -> Result<String, String> {
    match (env, file) {
        (Some(name), None) => match get(name) {
            Some(v) => check_sealed(&v)
                .map(|_| v.trim().to_string())
                .map_err(|e| format!("environment variable {name} {e}")),
            None => Err(format!("environment variable {name} is not set")),
        },
        (None, Some(path)) => {
            let v = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            check_sealed(&v)
                .map(|_| v.trim().to_string())
                .map_err(|e| format!("{} {e}", path.display()))
        }
        (Some(_), Some(_)) => Err("give secret_env or secret_file, not both".into()),
        (None, None) => Err("missing secret_env (or secret_file)".into()),
    }
}

fn header_names(list: &[String]) -> Result<Vec<String>, String> {
    list.iter()
        .map(|h| {
            http::HeaderName::from_bytes(h.trim().as_bytes())
                .map(|n| n.as_str().to_string())
                .map_err(|_| format!("{h:?} is not a header name"))
        })
        .collect()
}

/// A tokenizer URL: `http[s]://[user:password@]host[:port][/]`.
pub struct TokenizerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `user:password` from the URL, percent-decoded (tlsproxy sends it as Basic auth).
    pub userinfo: Option<Zeroizing<String>>,
}

impl TokenizerUrl {
    /// For messages: `scheme://host:port`, never the userinfo.
    pub fn display(&self) -> String {
        let a = Authority {
            host: self.host.clone(),
            port: Some(self.port),
        };
        format!("{}://{a}", if self.tls { "https" } else { "http" })
    }
}

/// Parse a tokenizer URL. Errors never quote the URL, which may hold a password.
pub fn parse_tokenizer_url(url: &str) -> Result<TokenizerUrl, String> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    let (tls, rest) = if lower.starts_with("http://") {
        (false, &url[7..])
    } else if lower.starts_with("https://") {
        (true, &url[8..])
    } else {
        return Err(
            "not a URL like http://tokenizer.flycast (scheme must be http or https)".into(),
        );
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if !tail.is_empty() && tail != "/" {
        return Err("a tokenizer URL has no path, query or fragment".into());
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => {
            let decoded = percent_encoding::percent_decode_str(u)
                .decode_utf8()
                .map_err(|_| "the URL's user:password is not UTF-8".to_string())?;
            (Some(Zeroizing::new(decoded.into_owned())), h)
        }
        None => (None, authority),
    };
    let a = Authority::parse(hostport).map_err(|e| format!("the URL's host: {e}"))?;
    let port = a.port.unwrap_or(if tls { 443 } else { 80 });
    Ok(TokenizerUrl {
        tls,
        host: a.host,
        port,
        userinfo,
    })
}

fn make_route(
    host: &str,
    sealed: String,
    params: BTreeMap<String, String>,
    strip: Vec<String>,
) -> Result<Route, String> {
    let value = TokenizerHeader { sealed, params }.format();
    let mut proxy_tokenizer = HeaderValue::from_str(&value)
        .map_err(|_| "the sealed secret or params are not a valid header value".to_string())?;
    proxy_tokenizer.set_sensitive(true);
    let mut all = strip;
    all.extend(header_names(
        &ALWAYS_STRIP
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )?);
    all.sort();
    all.dedup();
    let all = all
        .iter()
        .map(|h| http::HeaderName::from_bytes(h.as_bytes()).expect("checked by header_names"))
        .collect();
    Ok(Route {
        host: host.to_string(),
        host_header: HeaderValue::from_str(host)
            .map_err(|_| "the host is not a valid header value".to_string())?,
        proxy_tokenizer,
        strip: all,
        policy: None,
    })
}

/// Every address parses as `ip:port`, and there is at least one.
fn check_addresses(w: &Where, key: &str, list: &[String]) -> Result<(), String> {
    if list.is_empty() {
        return Err(w.err(key, "needs at least one address"));
    }
    for (i, a) in list.iter().enumerate() {
        a.parse::<std::net::SocketAddr>().map_err(|_| {
            w.err(
                &format!("{key}[{i}]"),
                format!("{a:?} is not an address like 127.0.0.1:443 or [::1]:443"),
            )
        })?;
    }
    Ok(())
}

/// A credential given by an environment variable or a file (`keys` name the two settings in
/// errors): None when neither is set, trimmed, never printed.
fn env_or_file(
    env: Option<&str>,
    file: Option<&Path>,
    get: Env,
    keys: (&str, &str),
) -> Result<Option<Zeroizing<String>>, String> {
    let text = Zeroizing::new(match (env, file) {
        (None, None) => return Ok(None),
        (Some(name), None) => {
            get(name).ok_or_else(|| format!("environment variable {name} is not set"))?
        }
        (None, Some(p)) => {
            std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?
        }
        (Some(_), Some(_)) => return Err(format!("give {} or {}, not both", keys.0, keys.1)),
    });
    Ok(Some(Zeroizing::new(text.trim().to_string())))
}

/// The proxy listener's password, from an env var or a file (trimmed, not empty).
fn read_password(
    env: Option<&str>,
    file: Option<&Path>,
    get: Env,
) -> Result<Zeroizing<String>, String> {
    let keys = ("password_env", "password_file");
    match env_or_file(env, file, get, keys)? {
        None => Err("needs password_env or password_file".into()),
        Some(p) if p.is_empty() => Err("the password is empty".into()),
        Some(p) => Ok(p),
    }
}

fn tokenizer_auth(
    env: Option<&str>,
    file: Option<&Path>,
    get: Env,
) -> Result<Option<HeaderValue>, String> {
    let Some(secret) = env_or_file(env, file, get, ("auth_env", "auth_file"))? else {
        return Ok(None);
    };
    let mut v = HeaderValue::from_str(&format!("Bearer {}", secret.as_str()))
        .map_err(|_| "the tokenizer credential is not a valid header value".to_string())?;
    v.set_sensitive(true);
    Ok(Some(v))
}

/// Parse and validate the sidecar's section of a YAML config file.
pub fn from_file(path: &Path, env: Env) -> Result<Sidecar, String> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{source}: cannot read: {e}"))?;
    from_yaml(&text, &source, env)
}

/// Parse YAML text; `source` names it in errors. Relative CA paths stay relative to the
/// working directory (like pingora's own paths).
pub fn from_yaml(text: &str, source: &str, env: Env) -> Result<Sidecar, String> {
    let w = Where { source };
    let file: File = serde_yaml::from_str(text).map_err(|e| format!("{source}: {e}"))?;
    let s = file
        .proxypilot
        .ok_or_else(|| w.err("proxypilot", "missing section (listen, tokenizer, routes)"))?;

    let listen = s
        .listen
        .unwrap_or_else(|| loopback_listen(defaults::LISTEN_PORT));
    check_addresses(&w, "proxypilot.listen", &listen)?;
    let proxy = match s.proxy_listen {
        None => {
            for (key, set) in [
                ("proxy_auth", s.proxy_auth.is_some()),
                ("passthrough", !s.passthrough.is_empty()),
            ] {
                if set {
                    return Err(w.err(
                        &format!("proxypilot.{key}"),
                        "only with proxy_listen (the CONNECT listener)",
                    ));
                }
            }
            None
        }
        Some(l) => {
            let key = "proxypilot.proxy_listen";
            let addrs = match l {
                FileListen::Port(0) => return Err(w.err(key, "port 0 is not a port")),
                FileListen::Port(p) => loopback_listen(p),
                FileListen::Addresses(a) => a,
            };
            check_addresses(&w, key, &addrs)?;
            if let Some(a) = addrs.iter().find(|a| listen.contains(a)) {
                return Err(w.err(key, format!("{a} is also in proxypilot.listen")));
            }
            let password = match s.proxy_auth {
                None => None,
                Some(a) => Some(
                    read_password(a.password_env.as_deref(), a.password_file.as_deref(), env)
                        .map_err(|e| w.err("proxypilot.proxy_auth", e))?,
                ),
            };
            let passthrough = s
                .passthrough
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    Passthrough::parse(p)
                        .map_err(|e| w.err(&format!("proxypilot.passthrough[{i}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(ProxyListener {
                listen: addrs,
                password,
                passthrough,
            })
        }
    };
    let dur = |key: &str, v: Option<String>, default: Duration| -> Result<Duration, String> {
        match v {
            None => Ok(default),
            Some(v) => {
                let d = parse_duration(&v).map_err(|e| w.err(key, e))?;
                if d.is_zero() {
                    return Err(w.err(key, "must be more than zero"));
                }
                Ok(d)
            }
        }
    };
    let leaf_lifetime = dur(
        "proxypilot.leaf_lifetime",
        s.leaf_lifetime,
        defaults::LEAF_LIFETIME,
    )?;
    let read_timeout = dur(
        "proxypilot.read_timeout",
        s.read_timeout,
        defaults::READ_TIMEOUT,
    )?;
    let defaults = ClientLimits::default();
    let client = ClientLimits {
        header_timeout: dur(
            "proxypilot.client_header_timeout",
            s.client_header_timeout,
            defaults.header_timeout,
        )?,
        idle_timeout: dur(
            "proxypilot.client_idle_timeout",
            s.client_idle_timeout,
            defaults.idle_timeout,
        )?,
        max_connections: match s.max_connections {
            None => defaults.max_connections,
            Some(0) => return Err(w.err("proxypilot.max_connections", "must be at least 1")),
            Some(n) => n,
        },
    };
    let access_log = match s.access_log.as_deref() {
        None | Some("text") => AccessLog::Text,
        Some("json") => AccessLog::Json,
        Some(other) => {
            return Err(w.err(
                "proxypilot.access_log",
                format!("{other:?} is not text or json"),
            ))
        }
    };
    let ca_lifetime = dur(
        "proxypilot.ca.lifetime",
        s.ca.lifetime,
        defaults::CA_LIFETIME,
    )?;
    let ca = CaFiles {
        cert: s
            .ca
            .cert
            .unwrap_or_else(|| PathBuf::from(defaults::CA_CERT)),
        key: s.ca.key.unwrap_or_else(|| PathBuf::from(defaults::CA_KEY)),
        lifetime: ca_lifetime,
    };

    let url =
        parse_tokenizer_url(&s.tokenizer.url).map_err(|e| w.err("proxypilot.tokenizer.url", e))?;
    if url.userinfo.is_some() {
        return Err(w.err(
            "proxypilot.tokenizer.url",
            "has a user:password; put the password in auth_env or auth_file instead, so the \
             config file holds no credential",
        ));
    }
    let (tls, host, port) = (url.tls, url.host.clone(), url.port);
    let proxy_authorization = tokenizer_auth(
        s.tokenizer.auth_env.as_deref(),
        s.tokenizer.auth_file.as_deref(),
        env,
    )
    .map_err(|e| w.err("proxypilot.tokenizer", e))?;
    if s.tokenizer.spares > 64 {
        return Err(w.err("proxypilot.tokenizer.spares", "at most 64"));
    }
    let tokenizer_ca = match &s.tokenizer.ca {
        Some(_) if !tls => {
            return Err(w.err(
                "proxypilot.tokenizer.ca",
                "only for an https:// tokenizer url",
            ))
        }
        Some(path) => {
            crate::trust::ca_file(path).map_err(|e| w.err("proxypilot.tokenizer.ca", e))?
        }
        None => Vec::new(),
    };
    let tokenizer = Tokenizer {
        url: url.display(),
        tls,
        host,
        port,
        proxy_authorization,
        fly_src_optin: s.tokenizer.fly_src_optin,
        spares: s.tokenizer.spares,
        spare_max_age: dur(
            "proxypilot.tokenizer.spare_max_age",
            s.tokenizer.spare_max_age,
            defaults::SPARE_MAX_AGE,
        )?,
        connect_timeout: dur(
            "proxypilot.tokenizer.connect_timeout",
            s.tokenizer.connect_timeout,
            defaults::TOKENIZER_CONNECT_TIMEOUT,
        )?,
        ca: tokenizer_ca,
    };

    let global_strip = header_names(
        &s.strip_headers
            .unwrap_or_else(|| defaults::STRIP.iter().map(|h| h.to_string()).collect()),
    )
    .map_err(|e| w.err("proxypilot.strip_headers", e))?;
    if s.routes.is_empty() {
        return Err(w.err("proxypilot.routes", "needs at least one route"));
    }
    let mut routes = HashMap::new();
    for (i, r) in s.routes.into_iter().enumerate() {
        let key = format!("proxypilot.routes[{i}]");
        let host =
            crate::host::check_dns_name(&r.host).map_err(|e| w.err(&format!("{key}.host"), e))?;
        for p in r.params.keys() {
            if !["dst", "fmt", "msg", "placeholder"].contains(&p.as_str()) {
                return Err(w.err(
                    &format!("{key}.params"),
                    format!("unknown param {p:?} (known: dst, fmt, msg, placeholder)"),
                ));
            }
        }
        let sealed = read_secret(r.secret_env.as_deref(), r.secret_file.as_deref(), env)
            .map_err(|e| w.err(&key, e))?;
        let mut strip = global_strip.clone();
        strip.extend(
            header_names(&r.strip_headers)
                .map_err(|e| w.err(&format!("{key}.strip_headers"), e))?,
        );
        let mut route = make_route(&host, sealed, r.params, strip).map_err(|e| w.err(&key, e))?;
        // Policy::parse names the list and position (`allow[1]: ...`), below this route's key.
        let policy =
            Policy::parse(&r.allow, &r.deny).map_err(|e| format!("{source}: {key}.{e}"))?;
        route.policy = (!policy.is_empty()).then_some(policy);
        if routes.insert(host.clone(), Arc::new(route)).is_some() {
            return Err(w.err(&format!("{key}.host"), format!("{host} is routed twice")));
        }
    }
    Ok(Sidecar {
        listen,
        proxy,
        ca,
        leaf_lifetime,
        read_timeout,
        client,
        access_log,
        tokenizer,
        routes,
        source: source.to_string(),
    })
}

/// tlsproxy's drop-in environment: `TARGETS=host=ENV,...`, `PROXY`, `PORT`; CA in the working
/// directory as `ca.pem`/`ca-key.pem`.
pub fn from_env(get: Env) -> Result<Sidecar, String> {
    let targets = get("TARGETS")
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            "no config file (-c) and TARGETS is not set: give -c conf/proxy.yaml, or set \
         TARGETS=api.github.com=GH_TOKEN,... as for tlsproxy"
                .to_string()
        })?;
    let port: u16 = match get("PORT") {
        None => defaults::LISTEN_PORT,
        Some(p) => p
            .trim()
            .parse()
            .map_err(|_| format!("PORT: {p:?} is not a port number"))?,
    };
    let url = get("PROXY").unwrap_or_else(|| defaults::TOKENIZER.to_string());
    let url = parse_tokenizer_url(&url).map_err(|e| format!("PROXY: {e}"))?;
    // As tlsproxy: a user:password in PROXY becomes Basic auth to the tokenizer.
    let proxy_authorization = match &url.userinfo {
        None => None,
        Some(userinfo) => {
            use base64::Engine;
            let b64 = Zeroizing::new(
                base64::engine::general_purpose::STANDARD.encode(userinfo.as_bytes()),
            );
            let mut v = HeaderValue::from_str(&format!("Basic {}", b64.as_str()))
                .map_err(|_| "PROXY: the user:password is not a valid header value".to_string())?;
            v.set_sensitive(true);
            Some(v)
        }
    };
    let strip = header_names(
        &defaults::STRIP
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>(),
    )?;
    let mut routes = HashMap::new();
    for item in targets.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (h, env) = item
            .split_once('=')
            .ok_or_else(|| format!("TARGETS: {item:?} is not host=ENV_VAR_NAME"))?;
        let host = crate::host::check_dns_name(h).map_err(|e| format!("TARGETS: {e}"))?;
        let env = env.trim();
        let sealed = match get(env) {
            None => {
                return Err(format!(
                    "TARGETS: environment variable {env} (for {host}) is not set"
                ))
            }
            Some(v) => {
                check_sealed(&v).map_err(|e| format!("TARGETS: environment variable {env} {e}"))?;
                v.trim().to_string()
            }
        };
        let route = make_route(&host, sealed, BTreeMap::new(), strip.clone())
            .map_err(|e| format!("TARGETS: {host}: {e}"))?;
        if routes.insert(host.clone(), Arc::new(route)).is_some() {
            return Err(format!("TARGETS: {host} is listed twice"));
        }
    }
    if routes.is_empty() {
        return Err("TARGETS: no targets".into());
    }
    Ok(Sidecar {
        listen: loopback_listen(port),
        proxy: None,
        ca: CaFiles {
            cert: PathBuf::from(defaults::DROPIN_CA_CERT),
            key: PathBuf::from(defaults::DROPIN_CA_KEY),
            lifetime: defaults::CA_LIFETIME,
        },
        leaf_lifetime: defaults::LEAF_LIFETIME,
        read_timeout: defaults::READ_TIMEOUT,
        client: ClientLimits::default(),
        access_log: AccessLog::Text,
        tokenizer: Tokenizer {
            url: url.display(),
            tls: url.tls,
            host: url.host.clone(),
            port: url.port,
            proxy_authorization,
            // tlsproxy asks for Fly-Src on every request, so that a tokenizer reached through
            // tokenizer.fly.io can check fly_src_auth.
            fly_src_optin: true,
            spares: 0,
            spare_max_age: defaults::SPARE_MAX_AGE,
            connect_timeout: defaults::TOKENIZER_CONNECT_TIMEOUT,
            ca: Vec::new(),
        },
        routes,
        source: "environment (TARGETS)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEALED: &str = "IQ4cJ7Xk3f2SlhOEoYxZBsR1ZlSMkgZ4Cy2RJRHJ/VTjHjChQIIo+Nh71acWsORQuUZANtpZXIWZ/0Ork9k4jQoSNoRWyUk6tSB0ACvxYlWQ5LvFPDJTkBNrzqcG++XWiIE5iY9AEjKPDvs=";

    /// The test environment: sealed-looking values for PP_TEST_SEALED_*, a raw token.
    fn env(name: &str) -> Option<String> {
        if name.starts_with("PP_TEST_SEALED") {
            Some(SEALED.to_string())
        } else if name == "PP_TEST_RAW_TOKEN" {
            Some("ghp_realtoken_not_sealed".to_string())
        } else {
            None
        }
    }

    fn yaml(routes: &str) -> String {
        format!(
            "version: 1\nthreads: 2\nproxypilot:\n  listen: [\"127.0.0.1:8443\"]\n  tokenizer:\n    url: http://127.0.0.1:8080\n  routes:\n{routes}"
        )
    }

    #[test]
    fn parses_a_route_from_env() {
        let c = from_yaml(
            &yaml("    - host: API.GitHub.com\n      secret_env: PP_TEST_SEALED_A\n      params: {dst: X-Api-Key}\n"), "t.yaml", &env)
        .unwrap();
        let r = &c.routes["api.github.com"];
        assert!(r.strip.contains(&http::header::AUTHORIZATION));
        assert!(r
            .strip
            .contains(&http::HeaderName::from_static("proxy-tokenizer")));
        assert!(r.proxy_tokenizer.is_sensitive());
        assert!(r
            .proxy_tokenizer
            .to_str()
            .unwrap()
            .ends_with("; {\"dst\":\"X-Api-Key\"}"));
        assert_eq!(c.tokenizer.port, 8080);
        assert!(!format!("{r:?}").contains(SEALED));
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let e = from_yaml(
            &yaml("    - host: api.github.com\n      secret_env: PP_TEST_DEFINITELY_UNSET\n"),
            "conf/x.yaml",
            &env,
        )
        .err()
        .unwrap();
        assert_eq!(
            e,
            "conf/x.yaml: proxypilot.routes[0]: environment variable PP_TEST_DEFINITELY_UNSET is not set"
        );
        let e = from_yaml(
            &yaml("    - host: api.github.com\n      secret_evn: X\n"),
            "conf/x.yaml",
            &env,
        )
        .err()
        .unwrap();
        assert!(
            e.starts_with("conf/x.yaml: ") && e.contains("secret_evn") && e.contains("line"),
            "{e}"
        );
        let e = from_yaml(
            &yaml("    - host: api.github.com\n      secret_env: PP_TEST_RAW_TOKEN\n"),
            "c.yaml",
            &env,
        )
        .err()
        .unwrap();
        assert!(
            e.contains("does not look like a sealed secret") && !e.contains("ghp_"),
            "{e}"
        );
        let e = from_yaml(
            &yaml("    - host: https://api.github.com\n      secret_env: X\n"),
            "c.yaml",
            &env,
        )
        .err()
        .unwrap();
        assert!(e.contains("routes[0].host"), "{e}");
    }

    #[test]
    fn access_log_is_text_or_json() {
        let route = "    - host: api.github.com\n      secret_env: PP_TEST_SEALED_AL\n";
        let with = |v: &str| {
            yaml(route).replace("  tokenizer:", &format!("  access_log: {v}\n  tokenizer:"))
        };
        assert_eq!(
            from_yaml(&yaml(route), "c.yaml", &env).unwrap().access_log,
            AccessLog::Text
        );
        assert_eq!(
            from_yaml(&with("json"), "c.yaml", &env).unwrap().access_log,
            AccessLog::Json
        );
        let e = from_yaml(&with("xml"), "c.yaml", &env).err().unwrap();
        assert_eq!(
            e,
            "c.yaml: proxypilot.access_log: \"xml\" is not text or json"
        );
    }

    #[test]
    fn tokenizer_ca_only_for_https_and_must_hold_a_certificate() {
        let route = "    - host: api.github.com\n      secret_env: PP_TEST_SEALED_CA\n";
        let with = |url: &str, ca: &str| {
            yaml(route).replace(
                "    url: http://127.0.0.1:8080\n",
                &format!("    url: {url}\n    ca: {ca}\n"),
            )
        };
        let e = from_yaml(
            &with("http://127.0.0.1:8080", "/etc/hostname"),
            "c.yaml",
            &env,
        )
        .err()
        .unwrap();
        assert_eq!(
            e,
            "c.yaml: proxypilot.tokenizer.ca: only for an https:// tokenizer url"
        );
        let e = from_yaml(
            &with("https://tok.example", "/etc/hostname"),
            "c.yaml",
            &env,
        )
        .err()
        .unwrap();
        assert!(
            e.contains("proxypilot.tokenizer.ca") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = from_yaml(
            &with("https://tok.example", "/nonexistent/ca.pem"),
            "c.yaml",
            &env,
        )
        .err()
        .unwrap();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        // A good file is parsed once, here: the runtime config holds the certificates.
        let cert = rcgen::generate_simple_self_signed(vec!["tok.example".into()]).unwrap();
        let path = std::env::temp_dir().join(format!("pp-test-ca-{}.pem", std::process::id()));
        std::fs::write(&path, cert.cert.pem()).unwrap();
        let c = from_yaml(
            &with("https://tok.example", path.to_str().unwrap()),
            "c.yaml",
            &env,
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.unwrap().tokenizer.ca.len(), 1);
    }

    #[test]
    fn tlsproxy_environment() {
        let env: HashMap<&str, &str> = [
            (
                "TARGETS",
                "api.anthropic.com=ANTHROPIC_API_KEY,api.github.com=GH_TOKEN",
            ),
            ("ANTHROPIC_API_KEY", SEALED),
            ("GH_TOKEN", SEALED),
            ("PORT", "8443"),
        ]
        .into_iter()
        .collect();
        let c = from_env(&|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.hosts(), vec!["api.anthropic.com", "api.github.com"]);
        assert_eq!(c.listen, vec!["127.0.0.1:8443", "[::1]:8443"]);
        assert_eq!(c.tokenizer.url, "http://tokenizer.flycast:80");
        assert_eq!(c.ca.cert, PathBuf::from("ca.pem"));
        let e = from_env(&|k| (k == "TARGETS").then(|| "api.github.com=NOPE".to_string()))
            .err()
            .unwrap();
        assert!(e.contains("NOPE") && e.contains("not set"), "{e}");
    }

    #[test]
    fn tokenizer_urls() {
        let u = parse_tokenizer_url("https://tokenizer.fly.io").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (true, "tokenizer.fly.io", 443)
        );
        assert!(u.userinfo.is_none());
        let u = parse_tokenizer_url("http://[::1]:9000/").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "::1", 9000));
        assert_eq!(u.display(), "http://[::1]:9000");
        let u = parse_tokenizer_url("HTTP://me:p%40ss@tok.example:8080").unwrap();
        assert_eq!(u.userinfo.as_deref().map(|s| s.as_str()), Some("me:p@ss"));
        assert_eq!(u.display(), "http://tok.example:8080");
        for bad in [
            "ftp://x",
            "http://x/path",
            "http://x?q",
            "http://x:port",
            "http://me:hunter2@x:notaport",
            "http://me:hunter2@/",
        ] {
            let e = parse_tokenizer_url(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad}"));
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn dropin_sends_fly_src_optin_and_basic_auth_from_proxy_userinfo() {
        let env: HashMap<&str, &str> = [
            ("TARGETS", "api.github.com=GH_TOKEN"),
            ("GH_TOKEN", SEALED),
            ("PROXY", "http://tok:s3cr%2Ft@tokenizer.flycast"),
        ]
        .into_iter()
        .collect();
        let c = from_env(&|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert!(c.tokenizer.fly_src_optin);
        let auth = c.tokenizer.proxy_authorization.as_ref().unwrap();
        assert!(auth.is_sensitive());
        // base64("tok:s3cr/t")
        assert_eq!(auth.to_str().unwrap(), "Basic dG9rOnMzY3IvdA==");
        assert_eq!(c.tokenizer.url, "http://tokenizer.flycast:80");
        let env: HashMap<&str, &str> =
            [("TARGETS", "api.github.com=GH_TOKEN"), ("GH_TOKEN", SEALED)]
                .into_iter()
                .collect();
        let c = from_env(&|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert!(c.tokenizer.fly_src_optin && c.tokenizer.proxy_authorization.is_none());
    }

    #[test]
    fn proxy_listener_port_addresses_and_password_from_env_or_file() {
        let route = "    - host: api.github.com\n      secret_env: PP_TEST_SEALED_PL\n";
        let with =
            |extra: &str| yaml(route).replace("  tokenizer:", &format!("{extra}  tokenizer:"));
        let c = from_yaml(&with("  proxy_listen: 3128\n"), "c.yaml", &env).unwrap();
        let p = c.proxy.unwrap();
        assert_eq!(p.listen, vec!["127.0.0.1:3128", "[::1]:3128"]);
        assert!(p.password.is_none() && p.passthrough.is_empty());
        assert!(from_yaml(&yaml(route), "c.yaml", &env)
            .unwrap()
            .proxy
            .is_none());
        // A password file is read once and trimmed; an empty one is refused.
        let path = std::env::temp_dir().join(format!("pp-test-pw-{}", std::process::id()));
        std::fs::write(&path, "  s3cret-from-file\n").unwrap();
        let extra = format!(
            "  proxy_listen: [\"127.0.0.1:3128\"]\n  proxy_auth: {{password_file: {}}}\n  passthrough: [\"*.pypi.org\"]\n",
            path.display()
        );
        let p = from_yaml(&with(&extra), "c.yaml", &env)
            .unwrap()
            .proxy
            .unwrap();
        assert_eq!(
            p.password.as_deref().map(|s| s.as_str()),
            Some("s3cret-from-file")
        );
        assert_eq!(p.passthrough[0].text, "*.pypi.org");
        std::fs::write(&path, " \n").unwrap();
        let e = from_yaml(&with(&extra), "c.yaml", &env).err().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(e, "c.yaml: proxypilot.proxy_auth: the password is empty");
        let e = from_yaml(
            &with("  proxy_listen: 3128\n  proxy_auth: {password_env: A, password_file: /x}\n"),
            "c.yaml",
            &env,
        )
        .err()
        .unwrap();
        assert!(e.contains("not both"), "{e}");
        let e = from_yaml(
            &with("  proxy_listen: [\"127.0.0.1:8443\"]\n"),
            "c.yaml",
            &env,
        )
        .err()
        .unwrap();
        assert!(e.contains("also in proxypilot.listen"), "{e}");
    }

    #[test]
    fn yaml_url_with_a_password_is_refused_without_echoing_it() {
        let y = yaml("    - host: api.github.com\n      secret_env: PP_TEST_SEALED_UI\n")
            .replace("http://127.0.0.1:8080", "http://me:hunter2@127.0.0.1:8080");
        let e = from_yaml(&y, "c.yaml", &env).err().unwrap();
        assert!(
            e.contains("proxypilot.tokenizer.url") && !e.contains("hunter2"),
            "{e}"
        );
    }
}
