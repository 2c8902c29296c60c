//! The secret JSON model of the tokenizer protocol and its rules.
//!
//! Owns: the wire form of a sealed secret (processors, auths, request validators, with the
//! reference's key names and encodings), the check that a secret has exactly one processor and
//! one auth, the `fmt`/`dst` rules, and a redacted one-line summary for logs.
//! Must not: expose a token, HMAC key or digest through `Debug`, `Display` or errors.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use zeroize::Zeroizing;

use crate::host;
use crate::policy::{Policy, Refusal};
use crate::sealing::Params;

/// Processors that exist in the reference tokenizer but are not implemented here.
const UNSUPPORTED_PROCESSORS: &[&str] = &[
    "oauth2_processor",
    "oauth2_body_processor",
    "sigv4_processor",
    "jwt_processor",
    "client_credentials_processor",
    "multi_processor",
];
/// Auths that exist in the reference tokenizer but are not implemented here.
const UNSUPPORTED_AUTHS: &[&str] = &["macaroon_auth", "flyio_macaroon_auth"];

/// Is an unknown top-level key a processor or an auth? Any key named like one (the reference
/// keeps adding them, e.g. `github_app_processor`) is refused rather than ignored, so a secret
/// never does less than its author meant.
fn kind_of_unknown(key: &str) -> Option<&'static str> {
    if key.ends_with("_processor") || UNSUPPORTED_PROCESSORS.contains(&key) {
        Some("processor")
    } else if key.ends_with("_auth") || UNSUPPORTED_AUTHS.contains(&key) {
        Some("auth")
    } else {
        None
    }
}

/// Rules sealed in a secret judge method and path only: the tokenizer does not read bodies
/// to judge GraphQL operation types (a route's rules in the sidecar do).
fn no_graphql_rules(p: &Policy) -> Result<(), String> {
    for (name, rules) in [("allow", &p.allow), ("deny", &p.deny)] {
        if let Some(i) = rules.iter().position(|r| r.has_ops()) {
            return Err(format!(
                "{name}[{i}]: GraphQL operation types are judged by a route's rules in the \
                 sidecar, not in a sealed secret"
            ));
        }
    }
    Ok(())
}

/// Headers a secret may never write: routing (Host), framing (Content-Length,
/// Transfer-Encoding, Expect), hop-by-hop (RFC 9110 §7.6.1) and every `Proxy-*` header. Writing
/// one would change where or how the request travels rather than authenticate it.
const FORBIDDEN_DST: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "expect",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
];

fn forbidden_dst(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    FORBIDDEN_DST.contains(&lower.as_str()) || lower.starts_with("proxy-")
}

/// What `proxypilot seal` is asked for, in plain terms: the token goes into `header` (default
/// `Authorization`) formatted with `fmt` (default `Bearer %s`, or the bare token with a
/// header), for `hosts`, usable by the Fly `orgs`/`apps`/`instances`, or by whoever knows
/// `password`, or (neither) by anyone holding the sealed blob.
#[derive(Default, Clone)]
pub struct SealSpec {
    pub hosts: Vec<String>,
    pub header: Option<String>,
    pub fmt: Option<String>,
    pub orgs: Vec<String>,
    pub apps: Vec<String>,
    pub instances: Vec<String>,
    pub password: Option<Zeroizing<String>>,
    /// Method/path rules sealed with the token (`--allow`/`--deny`); with any, the secret uses
    /// `proxypilot_inject_processor`, which only this tokenizer accepts.
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// Go encodes `[]byte` as standard base64; this wraps such a field.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct B64Bytes(pub Zeroizing<Vec<u8>>);

impl Serialize for B64Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(&self.0[..]))
    }
}

impl<'de> Deserialize<'de> for B64Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Option::<Zeroizing<String>>::deserialize(d)?;
        match s {
            None => Ok(B64Bytes::default()),
            Some(s) => B64
                .decode(s.trim())
                .map(|v| B64Bytes(Zeroizing::new(v)))
                .map_err(|_| serde::de::Error::custom("invalid base64 in a binary field")),
        }
    }
}

/// Go's `[]string` may arrive as `null`; both null and absent mean "empty".
fn null_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// `fmt`/`allowed_fmt` and `dst`/`allowed_dst`, shared by the injecting processors. As in the
/// reference, an absent or null `allowed_*` list allows anything, and an empty list allows
/// nothing.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq, Debug)]
pub struct FmtDst {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fmt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_fmt: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_dst: Option<Vec<String>>,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InjectProcessor {
    #[serde(default)]
    pub token: Zeroizing<String>,
    #[serde(flatten)]
    pub fmt_dst: FmtDst,
}

/// An `inject_processor` with method/path rules ([`crate::policy`]) that only this tokenizer
/// enforces. Under its own key on purpose: the reference tokenizer ignores keys it does not
/// know, so it finds no processor in such a secret and refuses it, rather than using the token
/// without its rules.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RulesInjectProcessor {
    #[serde(flatten)]
    pub inject: InjectProcessor,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InjectHmacProcessor {
    #[serde(default)]
    pub key: B64Bytes,
    #[serde(default)]
    pub hash: String,
    #[serde(flatten)]
    pub fmt_dst: FmtDst,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InjectBodyProcessor {
    #[serde(default)]
    pub token: Zeroizing<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub placeholder: String,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq, Debug)]
pub struct NoAuth {}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BearerAuth {
    /// base64 of sha256(password)
    #[serde(default)]
    pub digest: B64Bytes,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq, Debug)]
pub struct FlySrcAuth {
    #[serde(default, deserialize_with = "null_list")]
    pub allowed_orgs: Vec<String>,
    #[serde(default, deserialize_with = "null_list")]
    pub allowed_apps: Vec<String>,
    #[serde(default, deserialize_with = "null_list")]
    pub allowed_instances: Vec<String>,
}

/// The secret as it travels inside a sealed box. Unknown keys are kept by name only so that a
/// known-but-unsupported processor or auth gets a precise refusal.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Secret {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_processor: Option<InjectProcessor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxypilot_inject_processor: Option<RulesInjectProcessor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_hmac_processor: Option<InjectHmacProcessor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_body_processor: Option<InjectBodyProcessor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_auth: Option<NoAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_auth: Option<BearerAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fly_src_auth: Option<FlySrcAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_host_pattern: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Why a secret or a request for it was refused. The text is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// 400: a malformed secret, bad params, or a failed validator.
    BadRequest(String),
    /// 407: the request is not authorized to use this secret.
    NotAuthorized(String),
    /// 400 here: a processor or auth the reference has but this tokenizer does not implement.
    Unsupported(String),
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::BadRequest(m)
            | SecretError::NotAuthorized(m)
            | SecretError::Unsupported(m) => f.write_str(m),
        }
    }
}

fn bad(msg: impl Into<String>) -> SecretError {
    SecretError::BadRequest(msg.into())
}

/// A checked secret: exactly one processor and one auth.
pub struct Checked {
    pub processor: Processor,
    pub auth: Auth,
    pub allowed_hosts: Option<Vec<String>>,
    pub allowed_host_pattern: Option<regex::Regex>,
    /// Method/path rules sealed with the token (None: any request).
    pub rules: Option<Policy>,
}

#[derive(Clone)]
pub enum Processor {
    Inject(InjectProcessor),
    Hmac(InjectHmacProcessor),
    Body(InjectBodyProcessor),
}

pub enum Auth {
    None,
    Bearer(BearerAuth),
    FlySrc(FlySrcAuth),
}

impl Secret {
    /// An `inject_processor` secret built from a [`SealSpec`]; errors are fit for the user.
    pub fn inject(token: Zeroizing<String>, spec: &SealSpec) -> Result<Secret, String> {
        use sha2::{Digest, Sha256};
        let mut fd = FmtDst::default();
        if let Some(h) = &spec.header {
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("--header {h:?} is not a header name"))?;
            if forbidden_dst(h) {
                return Err(format!("--header {h:?}: a secret may not set routing, framing, hop-by-hop or Proxy-* headers"));
            }
            fd.dst = h.clone();
            fd.fmt = spec.fmt.clone().unwrap_or_else(|| "%s".into());
        } else if let Some(f) = &spec.fmt {
            fd.fmt = f.clone();
        }
        fd.apply_fmt(&Default::default(), FmtArg::Str("t"))
            .map_err(|_| format!("--fmt {:?}: needs exactly one %s", fd.fmt))?;
        let inject = InjectProcessor { token, fmt_dst: fd };
        let rules = Policy::parse(&spec.allow, &spec.deny).map_err(|e| format!("--{e}"))?;
        no_graphql_rules(&rules).map_err(|e| format!("--{e}"))?;
        let mut s = if rules.is_empty() {
            Secret {
                inject_processor: Some(inject),
                ..Default::default()
            }
        } else {
            Secret {
                proxypilot_inject_processor: Some(RulesInjectProcessor {
                    inject,
                    allow: spec.allow.clone(),
                    deny: spec.deny.clone(),
                }),
                ..Default::default()
            }
        };
        let fly = !(spec.orgs.is_empty() && spec.apps.is_empty() && spec.instances.is_empty());
        match (&spec.password, fly) {
            (Some(_), true) => {
                return Err("choose a password or --org/--app/--instance, not both".into())
            }
            (Some(pw), false) => {
                s.bearer_auth = Some(BearerAuth {
                    digest: B64Bytes(Zeroizing::new(Sha256::digest(pw.as_bytes()).to_vec())),
                });
            }
            (None, true) => {
                s.fly_src_auth = Some(FlySrcAuth {
                    allowed_orgs: spec.orgs.clone(),
                    allowed_apps: spec.apps.clone(),
                    allowed_instances: spec.instances.clone(),
                })
            }
            (None, false) => s.no_auth = Some(NoAuth {}),
        }
        if !spec.hosts.is_empty() {
            s.allowed_hosts = Some(spec.hosts.iter().map(|h| host::normalize(h)).collect());
        }
        Ok(s)
    }

    /// Parse the opened JSON. The error never quotes the input.
    pub fn from_json(json: &[u8]) -> Result<Secret, SecretError> {
        serde_json::from_slice(json)
            .map_err(|e| bad(format!("bad secret json: {}", json_error(&e))))
    }

    pub fn to_json(&self) -> Zeroizing<String> {
        Zeroizing::new(serde_json::to_string(self).expect("secret serializes"))
    }

    /// Enforce "exactly one processor, exactly one auth" and compile validators.
    pub fn check(self) -> Result<Checked, SecretError> {
        let present = |kind: &str| -> Vec<&str> {
            self.other
                .iter()
                .filter(|(k, v)| !v.is_null() && kind_of_unknown(k) == Some(kind))
                .map(|(k, _)| k.as_str())
                .collect()
        };
        let unsupported_p = present("processor");
        let unsupported_a = present("auth");

        let mut processors = Vec::new();
        if let Some(p) = self.inject_processor {
            processors.push(Processor::Inject(p));
        }
        let mut rules = None;
        if let Some(p) = self.proxypilot_inject_processor {
            let policy = Policy::parse(&p.allow, &p.deny)
                .and_then(|p| no_graphql_rules(&p).map(|_| p))
                .map_err(|e| bad(format!("bad secret: proxypilot_inject_processor.{e}")))?;
            if policy.is_empty() {
                return Err(bad(
                    "bad secret: proxypilot_inject_processor without allow or deny rules",
                ));
            }
            rules = Some(policy);
            processors.push(Processor::Inject(p.inject));
        }
        if let Some(p) = self.inject_hmac_processor {
            processors.push(Processor::Hmac(p));
        }
        if let Some(p) = self.inject_body_processor {
            processors.push(Processor::Body(p));
        }
        if let Some(name) = unsupported_p.first() {
            return Err(SecretError::Unsupported(format!(
                "bad secret: processor {name} is not supported by this tokenizer"
            )));
        }
        let n_proc = processors.len();
        if n_proc != 1 {
            return Err(bad(format!(
                "bad secret: expected exactly one processor, found {n_proc}"
            )));
        }

        let mut auths = Vec::new();
        if self.no_auth.is_some() {
            auths.push(Auth::None);
        }
        if let Some(a) = self.bearer_auth {
            auths.push(Auth::Bearer(a));
        }
        if let Some(a) = self.fly_src_auth {
            auths.push(Auth::FlySrc(a));
        }
        if let Some(name) = unsupported_a.first() {
            return Err(SecretError::Unsupported(format!(
                "bad secret: auth {name} is not supported by this tokenizer"
            )));
        }
        let n_auth = auths.len();
        if n_auth != 1 {
            return Err(bad(format!(
                "bad secret: expected exactly one auth, found {n_auth}"
            )));
        }

        let allowed_host_pattern = match self.allowed_host_pattern.as_deref() {
            None | Some("") => None,
            Some(p) => Some(
                regex::Regex::new(p)
                    .map_err(|_| bad("bad secret: allowed_host_pattern is not a valid regex"))?,
            ),
        };
        let processor = processors.pop().expect("one processor");
        if let Processor::Inject(InjectProcessor { fmt_dst, .. })
        | Processor::Hmac(InjectHmacProcessor { fmt_dst, .. }) = &processor
        {
            fmt_dst.check_own_dst()?;
        }
        Ok(Checked {
            processor,
            auth: auths.pop().expect("one auth"),
            allowed_hosts: self
                .allowed_hosts
                .map(|hosts| hosts.iter().map(|h| host::normalize(h)).collect()),
            allowed_host_pattern,
            rules,
        })
    }
}

impl Checked {
    /// Request validators: `allowed_hosts` (exact) and `allowed_host_pattern` (regex) on Host.
    pub fn validate_host(&self, host: &str) -> Result<(), SecretError> {
        if let Some(hosts) = &self.allowed_hosts {
            if !hosts.iter().any(|h| h == host) {
                return Err(bad(format!(
                    "request validator failed: host {host:?} not allowed for this secret"
                )));
            }
        }
        if let Some(re) = &self.allowed_host_pattern {
            if !re.is_match(host) {
                return Err(bad(format!(
                    "request validator failed: host {host:?} does not match the allowed pattern"
                )));
            }
        }
        Ok(())
    }

    /// The rules sealed with the token, for the request as it is forwarded (`path` without
    /// the query).
    pub fn validate_request(&self, method: &str, path: &str) -> Result<(), Refusal> {
        match &self.rules {
            Some(rules) => rules.check(method, path, None),
            None => Ok(()),
        }
    }

    /// Non-secret parts only, for logs: processor kind, dst/fmt, auth kind, validators. A
    /// value is shown only when it is well formed for its field (a header name, a format with
    /// one directive, a host, a Fly identifier), so a malformed secret's values never reach a
    /// log, whatever they hold.
    pub fn summary(&self) -> String {
        let proc = match &self.processor {
            Processor::Inject(p) => format!("inject{}", fmt_dst_summary(&p.fmt_dst)),
            Processor::Hmac(p) => {
                let hash = if p.hash == "sha256" {
                    "sha256"
                } else {
                    "<unsupported>"
                };
                format!("inject_hmac({hash}){}", fmt_dst_summary(&p.fmt_dst))
            }
            Processor::Body(_) => "inject_body".to_string(),
        };
        let auth = match &self.auth {
            Auth::None => "no_auth".to_string(),
            Auth::Bearer(_) => "bearer_auth".to_string(),
            Auth::FlySrc(a) => format!(
                "fly_src_auth(orgs={:?},apps={:?},instances={:?})",
                shown_list(&a.allowed_orgs, ident_ok),
                shown_list(&a.allowed_apps, ident_ok),
                shown_list(&a.allowed_instances, ident_ok)
            ),
        };
        let mut s = format!("{proc} {auth}");
        if let Some(h) = &self.allowed_hosts {
            let hosts = shown_list(h, |h| host::Authority::parse(h).is_ok());
            s.push_str(&format!(" allowed_hosts={hosts:?}"));
        }
        if let Some(p) = &self.allowed_host_pattern {
            s.push_str(&format!(" allowed_host_pattern={:?}", p.as_str()));
        }
        if let Some(r) = &self.rules {
            let texts = |rules: &[crate::policy::Rule]| -> Vec<String> {
                rules.iter().map(|r| r.text.clone()).collect()
            };
            s.push_str(&format!(
                " rules(allow={:?},deny={:?})",
                texts(&r.allow),
                texts(&r.deny)
            ));
        }
        s
    }
}

fn shown_list(list: &[String], ok: impl Fn(&str) -> bool) -> Vec<&str> {
    list.iter()
        .map(|v| if ok(v) { v.as_str() } else { "<invalid>" })
        .collect()
}

/// A Fly org, app or machine name: letters, digits, `-`, `_`, `.`; at most 64.
fn ident_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A format with exactly one directive, `%s`, `%x` or `%X`.
fn fmt_ok(f: &str) -> bool {
    let Some(i) = f.find('%') else { return false };
    matches!(f.as_bytes().get(i + 1), Some(b's' | b'x' | b'X')) && !f[i + 2..].contains('%')
}

fn fmt_dst_summary(fd: &FmtDst) -> String {
    let mut s = String::new();
    if !fd.dst.is_empty() {
        let ok = http::HeaderName::from_bytes(fd.dst.as_bytes()).is_ok() && !forbidden_dst(&fd.dst);
        s.push_str(&format!(
            " dst={}",
            if ok { fd.dst.as_str() } else { "<invalid>" }
        ));
    }
    if !fd.fmt.is_empty() {
        let fmt = if fmt_ok(&fd.fmt) {
            fd.fmt.as_str()
        } else {
            "<invalid>"
        };
        s.push_str(&format!(" fmt={fmt:?}"));
    }
    s
}

/// Replace every value of a secret's JSON that might be secret with `<redacted>`, for
/// `unseal`. Only fields known to hold no secret keep their value (the routing and policy parts
/// a reader needs); everything else, including every field of a processor or auth this build
/// does not know, is hidden.
pub fn redact_json(v: &mut serde_json::Value) {
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
        "allow",
        "deny",
    ];
    /// Redact every leaf under `v`, except the values of `SHOWN` keys in objects below it.
    fn all(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(_) => redact_json(v),
            serde_json::Value::Array(items) => items.iter_mut().for_each(all),
            serde_json::Value::Null => {}
            other => *other = serde_json::Value::String("<redacted>".into()),
        }
    }
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if !SHOWN.contains(&k.as_str()) {
                    all(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

/// The value to format: a string token (`%s`) or binary bytes (`%x`/`%X`).
pub enum FmtArg<'a> {
    Str(&'a str),
    Bin(&'a [u8]),
}

impl FmtDst {
    /// Choose and check the format (param, else fixed, else first allowed, else the default),
    /// then apply it. Exactly one directive; `%s` for strings, `%x`/`%X` for binary.
    pub fn apply_fmt(&self, params: &Params, arg: FmtArg<'_>) -> Result<String, SecretError> {
        let binary = matches!(arg, FmtArg::Bin(_));
        let allowed = self.allowed_fmt.as_deref();
        let format: &str = match params.get("fmt") {
            Some(f) => f,
            None if !self.fmt.is_empty() => &self.fmt,
            None if allowed.is_some_and(|a| !a.is_empty()) => &allowed.unwrap_or_default()[0],
            None if binary => "Bearer %x",
            None => "Bearer %s",
        };
        let bad_fmt = || bad("bad fmt");
        if !self.fmt.is_empty() && format != self.fmt {
            return Err(bad_fmt());
        }
        if allowed.is_some_and(|a| !a.iter().any(|f| f == format)) {
            return Err(bad_fmt());
        }
        // Byte positions: '%' and the directive are ASCII, so every slice below falls on a
        // character boundary whatever the rest of the format holds.
        let i = format.find('%').ok_or_else(bad_fmt)?;
        let directive = format.as_bytes().get(i + 1).copied().ok_or_else(bad_fmt)?;
        let value = match (directive, arg) {
            (b's', FmtArg::Str(s)) => s.to_string(),
            (b'x', FmtArg::Bin(b)) => hex::encode(b),
            (b'X', FmtArg::Bin(b)) => hex::encode_upper(b),
            _ => return Err(bad_fmt()),
        };
        let rest = &format[i + 2..];
        if rest.contains('%') {
            return Err(bad_fmt());
        }
        Ok(format!("{}{}{}", &format[..i], value, rest))
    }

    /// Choose and check the destination header (param, else fixed, else first allowed, else
    /// `Authorization`). Names compare canonically (case-insensitively).
    pub fn choose_dst(&self, params: &Params) -> Result<String, SecretError> {
        let allowed = self.allowed_dst.as_deref();
        let dst: &str = match params.get("dst") {
            Some(d) => d,
            None if !self.dst.is_empty() => &self.dst,
            None if allowed.is_some_and(|a| !a.is_empty()) => &allowed.unwrap_or_default()[0],
            None => "Authorization",
        };
        if !self.dst.is_empty() && !self.dst.eq_ignore_ascii_case(dst) {
            return Err(bad("bad dst"));
        }
        if allowed.is_some_and(|a| !a.iter().any(|x| x.eq_ignore_ascii_case(dst))) {
            return Err(bad("bad dst"));
        }
        http::HeaderName::from_bytes(dst.as_bytes()).map_err(|_| bad("bad dst"))?;
        if forbidden_dst(dst) {
            return Err(bad(
                "bad dst: a secret may not set routing, framing, hop-by-hop or Proxy-* headers",
            ));
        }
        Ok(canonical_header_name(dst))
    }

    /// The secret's own `dst` and `allowed_dst` must not name a forbidden header either.
    fn check_own_dst(&self) -> Result<(), SecretError> {
        let own = std::iter::once(&self.dst).chain(self.allowed_dst.iter().flatten());
        if own.filter(|d| !d.is_empty()).any(|d| forbidden_dst(d)) {
            return Err(bad(
                "bad secret: dst may not name routing, framing, hop-by-hop or Proxy-* headers",
            ));
        }
        Ok(())
    }
}

/// A JSON error without the text around it: serde_json's messages can quote the offending
/// value (`invalid type: string "..."`), and the value may be a token.
pub fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "not valid JSON",
        Category::Eof => "JSON ends early",
        Category::Data => "a field has the wrong type or value",
        Category::Io => "cannot be read",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

/// Go's `CanonicalMIMEHeaderKey`: `x-api-key` becomes `X-Api-Key`.
pub fn canonical_header_name(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> Params {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn exactly_one_processor_and_auth() {
        let two_auths =
            br#"{"inject_processor":{"token":"t"},"no_auth":{},"bearer_auth":{"digest":"AAAA"}}"#;
        let e = Secret::from_json(two_auths).unwrap().check().err().unwrap();
        assert!(matches!(e, SecretError::BadRequest(ref m) if m.contains("exactly one auth")));
        let two_procs = br#"{"inject_processor":{"token":"t"},"inject_body_processor":{"token":"u"},"no_auth":{}}"#;
        let e = Secret::from_json(two_procs).unwrap().check().err().unwrap();
        assert!(e.to_string().contains("exactly one processor"));
        let none = br#"{"no_auth":{}}"#;
        assert!(Secret::from_json(none).unwrap().check().is_err());
        let oauth = br#"{"oauth2_processor":{"token":{"access_token":"x"}},"no_auth":{}}"#;
        let e = Secret::from_json(oauth).unwrap().check().err().unwrap();
        assert!(e.to_string().contains("oauth2_processor is not supported"));
    }

    #[test]
    fn null_lists_and_unknown_keys_accepted() {
        let j = br#"{"inject_processor":{"token":"t","allowed_dst":null},"fly_src_auth":{"allowed_orgs":["o"],"allowed_apps":null,"allowed_instances":null},"allowed_hosts":null,"future_key":42}"#;
        let c = Secret::from_json(j).unwrap().check().unwrap();
        match c.auth {
            Auth::FlySrc(a) => {
                assert_eq!(a.allowed_orgs, vec!["o"]);
                assert!(a.allowed_apps.is_empty());
            }
            _ => panic!("wrong auth"),
        }
        assert!(c.allowed_hosts.is_none());
    }

    #[test]
    fn fmt_rules() {
        let fd = FmtDst::default();
        let p = Params::new();
        assert_eq!(fd.apply_fmt(&p, FmtArg::Str("tok")).unwrap(), "Bearer tok");
        assert_eq!(
            fd.apply_fmt(&p, FmtArg::Bin(&[0xab, 0x01])).unwrap(),
            "Bearer ab01"
        );
        let up = params(&[("fmt", "sig=%X")]);
        assert_eq!(fd.apply_fmt(&up, FmtArg::Bin(&[0xab])).unwrap(), "sig=AB");
        for f in ["%s %s", "%d", "none", "trailing%", "%%s", "a%sb%"] {
            assert!(
                fd.apply_fmt(&params(&[("fmt", f)]), FmtArg::Str("t"))
                    .is_err(),
                "{f}"
            );
        }
        // %s on binary and %x on strings are refused
        assert!(fd
            .apply_fmt(&params(&[("fmt", "%s")]), FmtArg::Bin(b"x"))
            .is_err());
        assert!(fd
            .apply_fmt(&params(&[("fmt", "%x")]), FmtArg::Str("x"))
            .is_err());
        // fixed fmt must match the param
        let fixed = FmtDst {
            fmt: "%s".into(),
            ..Default::default()
        };
        assert_eq!(fixed.apply_fmt(&p, FmtArg::Str("t")).unwrap(), "t");
        assert!(fixed
            .apply_fmt(&params(&[("fmt", "Bearer %s")]), FmtArg::Str("t"))
            .is_err());
        // allowed list: first is the default, others must be listed exactly
        let allowed = FmtDst {
            allowed_fmt: Some(vec!["Bearer %s".into(), "token=%s".into()]),
            ..Default::default()
        };
        assert_eq!(allowed.apply_fmt(&p, FmtArg::Str("t")).unwrap(), "Bearer t");
        assert_eq!(
            allowed
                .apply_fmt(&params(&[("fmt", "token=%s")]), FmtArg::Str("t"))
                .unwrap(),
            "token=t"
        );
        assert!(allowed
            .apply_fmt(&params(&[("fmt", "x=%s")]), FmtArg::Str("t"))
            .is_err());
    }

    #[test]
    fn dst_rules() {
        let p = Params::new();
        assert_eq!(FmtDst::default().choose_dst(&p).unwrap(), "Authorization");
        let fixed = FmtDst {
            dst: "x-api-key".into(),
            ..Default::default()
        };
        assert_eq!(fixed.choose_dst(&p).unwrap(), "X-Api-Key");
        assert!(fixed.choose_dst(&params(&[("dst", "X-Api-Key")])).is_ok());
        assert!(fixed.choose_dst(&params(&[("dst", "Other")])).is_err());
        let allowed = FmtDst {
            allowed_dst: Some(vec!["X-Stripe-Token".into(), "Authorization".into()]),
            ..Default::default()
        };
        assert_eq!(allowed.choose_dst(&p).unwrap(), "X-Stripe-Token");
        assert!(allowed
            .choose_dst(&params(&[("dst", "authorization")]))
            .is_ok());
        assert!(allowed.choose_dst(&params(&[("dst", "Other")])).is_err());
    }

    #[test]
    fn empty_allowed_lists_allow_nothing_null_allows_anything() {
        let p = Params::new();
        let empty = FmtDst {
            allowed_dst: Some(vec![]),
            allowed_fmt: Some(vec![]),
            ..Default::default()
        };
        assert!(empty.choose_dst(&p).is_err());
        assert!(empty.apply_fmt(&p, FmtArg::Str("t")).is_err());
        let j = br#"{"inject_processor":{"token":"t","allowed_dst":null,"allowed_fmt":null},"no_auth":{}}"#;
        let c = Secret::from_json(j).unwrap().check().unwrap();
        let Processor::Inject(ip) = &c.processor else {
            panic!("inject")
        };
        assert_eq!(ip.fmt_dst.choose_dst(&p).unwrap(), "Authorization");
        let j = br#"{"inject_processor":{"token":"t","allowed_dst":[]},"no_auth":{}}"#;
        let c = Secret::from_json(j).unwrap().check().unwrap();
        let Processor::Inject(ip) = &c.processor else {
            panic!("inject")
        };
        assert!(ip.fmt_dst.choose_dst(&p).is_err());
    }

    #[test]
    fn dst_never_names_routing_framing_hop_by_hop_or_proxy_headers() {
        let any = FmtDst::default();
        for d in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "Connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Expect",
            "Proxy-Authorization",
            "proxy-tokenizer",
            "Proxy-Anything",
        ] {
            let e = any.choose_dst(&params(&[("dst", d)])).unwrap_err();
            assert!(e.to_string().contains("bad dst"), "{d}: {e}");
        }
        // Even when the secret itself names one, fixed or in its allowed list.
        for j in [
            r#"{"inject_processor":{"token":"t","dst":"Host"},"no_auth":{}}"#,
            r#"{"inject_processor":{"token":"t","allowed_dst":["X-A","Proxy-Authorization"]},"no_auth":{}}"#,
            r#"{"inject_hmac_processor":{"key":"a2V5","hash":"sha256","dst":"transfer-encoding"},"no_auth":{}}"#,
        ] {
            assert!(
                Secret::from_json(j.as_bytes()).unwrap().check().is_err(),
                "{j}"
            );
        }
        assert_eq!(
            any.choose_dst(&params(&[("dst", "x-api-key")])).unwrap(),
            "X-Api-Key"
        );
    }

    #[test]
    fn apply_fmt_never_panics() {
        let fd = FmtDst::default();
        for f in [
            "%",
            "%é",
            "é%",
            "%%",
            "a%",
            "%\0",
            "Bearer %s😀",
            "%s%",
            "😀%s",
            "%😀",
            "%x",
            "",
            "%s\u{10FFFF}",
            "\u{7f}%s",
        ] {
            for arg in [FmtArg::Str("t"), FmtArg::Bin(b"\x01")] {
                let _ = fd.apply_fmt(&params(&[("fmt", f)]), arg);
            }
        }
        assert_eq!(
            fd.apply_fmt(&params(&[("fmt", "😀 %s 😀")]), FmtArg::Str("t"))
                .unwrap(),
            "😀 t 😀"
        );
    }

    #[test]
    fn unknown_processors_and_auths_are_refused_not_ignored() {
        for j in [
            r#"{"inject_processor":{"token":"t"},"github_app_processor":{"private_key":"x"},"no_auth":{}}"#,
            r#"{"github_app_processor":{"private_key":"x"},"no_auth":{}}"#,
            r#"{"inject_processor":{"token":"t"},"no_auth":{},"some_future_auth":{}}"#,
            r#"{"inject_processor":{"token":"t"},"macaroon_auth":{"key":"k"}}"#,
        ] {
            assert!(
                Secret::from_json(j.as_bytes()).unwrap().check().is_err(),
                "{j}"
            );
        }
        let e = Secret::from_json(br#"{"github_app_processor":{"private_key":"x"},"no_auth":{}}"#)
            .unwrap()
            .check()
            .err()
            .unwrap();
        assert!(matches!(e, SecretError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("github_app_processor"), "{e}");
    }

    #[test]
    fn json_errors_never_quote_values() {
        for j in [
            r#"{"inject_processor":{"token":"t","allowed_dst":"SUPERSECRET"},"no_auth":{}}"#,
            r#"{"inject_processor":{"token":["SUPERSECRET"]},"no_auth":{}}"#,
            r#"{"inject_processor":{"token":"t"},"no_auth":{},"allowed_hosts":"SUPERSECRET"}"#,
            r#"{"bearer_auth":{"digest":"SUPERSECRET!!"},"inject_processor":{"token":"t"}}"#,
            r#"{"inject_processor":{"token":"SUPERSECRET""#,
            r#"{"inject_processor":{"token":SUPERSECRET}}"#,
        ] {
            let e = Secret::from_json(j.as_bytes()).err().unwrap();
            assert!(!e.to_string().contains("SUPERSECRET"), "{e}");
        }
    }

    #[test]
    fn host_validators() {
        let j = br#"{"inject_processor":{"token":"t"},"no_auth":{},"allowed_hosts":["api.github.com"],"allowed_host_pattern":"^api\\.github\\.com$"}"#;
        let c = Secret::from_json(j).unwrap().check().unwrap();
        assert!(c.validate_host("api.github.com").is_ok());
        assert!(c.validate_host("api.github.com.evil.io").is_err());
    }

    #[test]
    fn summary_and_errors_hide_secrets() {
        let j = br#"{"inject_processor":{"token":"SUPERSECRET","dst":"X"},"bearer_auth":{"digest":"IDtwta6IOTIWG70L3tk1fnY+Y6/OmLFiML4z8LlMLMU="}}"#;
        let c = Secret::from_json(j).unwrap().check().unwrap();
        let s = c.summary();
        assert!(
            s.contains("inject dst=X") && s.contains("bearer_auth"),
            "{s}"
        );
        assert!(!s.contains("SUPERSECRET") && !s.contains("IDtwta"), "{s}");
        // Malformed values of otherwise usable fields are not shown either.
        let j = br#"{"inject_hmac_processor":{"key":"a2V5","hash":"MARK1","fmt":"MARK2 %d","dst":"MARK 3"},"fly_src_auth":{"allowed_orgs":["ok-org","MARK 4"]},"allowed_hosts":["api.github.com","MARK5:x"]}"#;
        let s = Secret::from_json(j).unwrap().check().unwrap().summary();
        assert!(!s.contains("MARK"), "{s}");
        assert!(s.contains("ok-org") && s.contains("api.github.com"), "{s}");
        let e = Secret::from_json(br#"{"inject_processor":{"token":SUPERSECRET}}"#)
            .err()
            .unwrap();
        assert!(!e.to_string().contains("SUPERSECRET"), "{e}");
    }

    #[test]
    fn redaction_hides_values_not_shape() {
        let mut v: serde_json::Value = serde_json::from_str(
            r#"{"inject_processor":{"token":"ghp_x","dst":"X"},"bearer_auth":{"digest":"abc"},"allowed_hosts":["a"]}"#,
        )
        .unwrap();
        redact_json(&mut v);
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
        redact_json(&mut v);
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
    fn rules_ride_with_the_processor_under_a_key_only_we_know() {
        let spec = SealSpec {
            hosts: vec!["api.github.com".into()],
            allow: vec!["GET,HEAD /repos/**".into()],
            deny: vec!["* /repos/*/secret/**".into()],
            ..Default::default()
        };
        let s = Secret::inject(Zeroizing::new("tok".to_string()), &spec).unwrap();
        let j: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        // No `inject_processor`: the reference tokenizer finds no processor and refuses.
        assert!(j.get("inject_processor").is_none(), "{j}");
        let p = &j["proxypilot_inject_processor"];
        assert_eq!(p["token"], "tok");
        assert_eq!(p["allow"], serde_json::json!(["GET,HEAD /repos/**"]));
        let checked = Secret::from_json(s.to_json().as_bytes())
            .unwrap()
            .check()
            .unwrap();
        assert!(checked.validate_request("GET", "/repos/o/r").is_ok());
        assert_eq!(
            checked
                .validate_request("POST", "/repos/o/r")
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            checked
                .validate_request("GET", "/repos/o/secret")
                .unwrap_err()
                .status,
            403
        );
        assert!(matches!(checked.processor, Processor::Inject(_)));
        let summary = checked.summary();
        assert!(
            summary.contains("rules(allow=[\"GET,HEAD /repos/**\"]"),
            "{summary}"
        );
        assert!(!summary.contains("tok\""), "{summary}");
        let mut shown = j.clone();
        redact_json(&mut shown);
        assert_eq!(shown["proxypilot_inject_processor"]["token"], "<redacted>");
        assert_eq!(shown["proxypilot_inject_processor"]["allow"], p["allow"]);
        // Without rules: the plain reference shape, usable by either tokenizer.
        let plain =
            Secret::inject(Zeroizing::new("tok".to_string()), &SealSpec::default()).unwrap();
        assert!(plain.inject_processor.is_some() && plain.proxypilot_inject_processor.is_none());
        // Bad rules, or the key without any, are refused.
        let bad_rule = SealSpec {
            allow: vec!["GET repos".into()],
            ..Default::default()
        };
        let err = Secret::inject(Zeroizing::new("t".into()), &bad_rule).err();
        assert!(err.is_some_and(|e| e.contains("allow[0]")));
        for json in [
            r#"{"proxypilot_inject_processor":{"token":"t"},"no_auth":{}}"#,
            r#"{"proxypilot_inject_processor":{"token":"t","allow":["GET x"]},"no_auth":{}}"#,
            r#"{"proxypilot_inject_processor":{"token":"t","allow":["GET /x"]},"inject_processor":{"token":"t"},"no_auth":{}}"#,
        ] {
            assert!(
                Secret::from_json(json.as_bytes()).unwrap().check().is_err(),
                "{json}"
            );
        }
    }

    #[test]
    fn seal_spec_builds_the_reference_shapes() {
        let token = || Zeroizing::new("tok".to_string());
        let s = Secret::inject(
            token(),
            &SealSpec {
                hosts: vec!["API.GitHub.com".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let j: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(j["inject_processor"]["token"], "tok");
        assert_eq!(j["no_auth"], serde_json::json!({}));
        assert_eq!(j["allowed_hosts"], serde_json::json!(["api.github.com"]));
        let s = Secret::inject(
            token(),
            &SealSpec {
                header: Some("x-api-key".into()),
                password: Some(Zeroizing::new("trustno1".into())),
                ..Default::default()
            },
        )
        .unwrap();
        let j: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(j["inject_processor"]["dst"], "x-api-key");
        assert_eq!(j["inject_processor"]["fmt"], "%s");
        assert_eq!(
            j["bearer_auth"]["digest"],
            "IDtwta6IOTIWG70L3tk1fnY+Y6/OmLFiML4z8LlMLMU="
        );
        let s = Secret::inject(
            token(),
            &SealSpec {
                apps: vec!["a".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert!(s.fly_src_auth.is_some() && s.no_auth.is_none());
        for bad in [
            SealSpec {
                header: Some("Host".into()),
                ..Default::default()
            },
            SealSpec {
                header: Some("bad header".into()),
                ..Default::default()
            },
            SealSpec {
                fmt: Some("%d".into()),
                ..Default::default()
            },
            SealSpec {
                apps: vec!["a".into()],
                password: Some(Zeroizing::new("p".into())),
                ..Default::default()
            },
        ] {
            assert!(Secret::inject(token(), &bad).is_err());
        }
    }
}
