//! Fly-Src: the signed statement Fly's proxy adds about which machine sent a request.
//!
//! Owns: parsing `Fly-Src: instance=<id>;app=<app>;org=<org>;ts=<unix-seconds>` (exactly these
//! four keys), verifying `Fly-Src-Signature` (base64 ed25519 over the raw header value) with
//! `ed25519-dalek`, the 30 s freshness window, and the trusted source networks.
//! Must not: trust a Fly-Src that arrived from outside the trusted networks.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use ipnet::IpNet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const MAX_AGE: Duration = Duration::from_secs(30);
pub const DEFAULT_PUBKEY_PATH: &str = "/.fly/fly-src.pub";
pub const DEFAULT_TRUSTED_NET: &str = "172.16.0.0/16";

/// A verified Fly-Src.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlySrc {
    pub instance: String,
    pub app: String,
    pub org: String,
    pub ts: u64,
}

/// How this tokenizer verifies Fly-Src.
pub struct Verifier25519 {
    key: VerifyingKey,
    trusted: Vec<IpNet>,
}

impl Verifier25519 {
    /// `key_hex` is the hex ed25519 public key (the content of `/.fly/fly-src.pub`).
    pub fn new(key_hex: &str, trusted: Vec<IpNet>) -> Result<Self, String> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(key_hex.trim(), &mut bytes)
            .map_err(|_| "fly-src public key must be 64 hex characters".to_string())?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "fly-src public key is not a valid ed25519 key".to_string())?;
        Ok(Verifier25519 { key, trusted })
    }

    pub fn trusts_source(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        self.trusted.iter().any(|n| n.contains(&addr))
    }

    /// Verify a Fly-Src value and its signature at time `now`.
    pub fn verify(
        &self,
        value: &str,
        signature_b64: &str,
        now: SystemTime,
    ) -> Result<FlySrc, String> {
        let sig = B64
            .decode(signature_b64.trim())
            .map_err(|_| "Fly-Src-Signature is not base64".to_string())?;
        let sig = Signature::from_slice(&sig).map_err(|_| "Fly-Src-Signature has a bad length")?;
        self.key
            .verify(value.as_bytes(), &sig)
            .map_err(|_| "Fly-Src signature does not verify".to_string())?;
        let src = parse(value)?;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now.saturating_sub(src.ts) > MAX_AGE.as_secs() {
            return Err(format!("Fly-Src is stale ({} s old)", now - src.ts));
        }
        if src.ts.saturating_sub(now) > MAX_AGE.as_secs() {
            return Err("Fly-Src timestamp is in the future".into());
        }
        Ok(src)
    }
}

/// Parse the four-key Fly-Src format; any other key, a missing key or a repeat is an error.
pub fn parse(value: &str) -> Result<FlySrc, String> {
    let (mut instance, mut app, mut org, mut ts) = (None, None, None, None);
    for part in value.split(';') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| "malformed Fly-Src".to_string())?;
        let slot = match k {
            "instance" => &mut instance,
            "app" => &mut app,
            "org" => &mut org,
            "ts" => &mut ts,
            _ => return Err(format!("malformed Fly-Src: unexpected key {k:?}")),
        };
        if slot.replace(v.to_string()).is_some() {
            return Err(format!("malformed Fly-Src: repeated key {k:?}"));
        }
    }
    let missing = |k: &str| format!("malformed Fly-Src: missing {k}");
    let ts = ts
        .ok_or_else(|| missing("ts"))?
        .parse::<u64>()
        .map_err(|_| "malformed Fly-Src: ts is not unix seconds".to_string())?;
    Ok(FlySrc {
        instance: instance.ok_or_else(|| missing("instance"))?,
        app: app.ok_or_else(|| missing("app"))?,
        org: org.ok_or_else(|| missing("org"))?,
        ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    // From ../shared/testdata/tokenizer-vectors.json (throwaway test key).
    const SEED: &str = "b1c27764c5eb0be020c00e0236b237e4ae3ea62d35ca22355f367310d5f47daf";
    const PUB: &str = "9a3570449717a9883ebc39855417c3eaa8d85328a333c2133479af5aeb96507e";
    const VALUE: &str = "instance=148e21ea7e1e89;app=proxypilot;org=personal;ts=1767225600";
    const SIG: &str =
        "ASS39EoNM0QzPkeRLfktjCu75WdUcA3PUghemgavVf9b+RU9Y65VVXQ8WfdDv/Tx+5+JcqbgX2dxSHD738FDBg==";

    fn at(ts: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(ts)
    }

    fn verifier() -> Verifier25519 {
        Verifier25519::new(PUB, vec![DEFAULT_TRUSTED_NET.parse().unwrap()]).unwrap()
    }

    #[test]
    fn vector_verifies_when_fresh() {
        let v = verifier();
        let src = v.verify(VALUE, SIG, at(1767225600 + 5)).unwrap();
        assert_eq!(src.app, "proxypilot");
        assert_eq!(src.org, "personal");
        assert_eq!(src.instance, "148e21ea7e1e89");
        assert!(v
            .verify(VALUE, SIG, at(1767225600 + 31))
            .unwrap_err()
            .contains("stale"));
        assert!(v.verify(VALUE, SIG, at(1767225600 - 60)).is_err());
    }

    #[test]
    fn tampered_or_wrong_key_fails() {
        let v = verifier();
        let tampered = VALUE.replace("personal", "other");
        assert!(v.verify(&tampered, SIG, at(1767225600)).is_err());
        let other = SigningKey::from_bytes(&[7u8; 32]);
        let sig = B64.encode(other.sign(VALUE.as_bytes()).to_bytes());
        assert!(v.verify(VALUE, &sig, at(1767225600)).is_err());
        // the right key re-signs fine
        let mut seed = [0u8; 32];
        hex::decode_to_slice(SEED, &mut seed).unwrap();
        let sig = B64.encode(
            SigningKey::from_bytes(&seed)
                .sign(VALUE.as_bytes())
                .to_bytes(),
        );
        assert!(v.verify(VALUE, &sig, at(1767225600)).is_ok());
    }

    #[test]
    fn format_is_exact() {
        assert!(parse("instance=a;app=b;org=c;ts=1").is_ok());
        assert!(parse("instance=a;app=b;org=c").is_err());
        assert!(parse("instance=a;app=b;org=c;ts=1;x=2").is_err());
        assert!(parse("instance=a;app=b;org=c;ts=1;ts=2").is_err());
        assert!(parse("instance=a;app=b;org=c;ts=soon").is_err());
    }

    #[test]
    fn trusted_networks() {
        let v = verifier();
        assert!(v.trusts_source("172.16.3.4".parse().unwrap()));
        assert!(v.trusts_source("::ffff:172.16.3.4".parse().unwrap()));
        assert!(!v.trusts_source("10.0.0.1".parse().unwrap()));
        assert!(!v.trusts_source("127.0.0.1".parse().unwrap()));
    }
}
