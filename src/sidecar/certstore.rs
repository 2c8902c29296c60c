//! Leaf certificates on demand: the cache behind the sidecar's TLS handshake callback.
//!
//! Owns: which server names get a certificate (routed hosts and `localhost`), a bounded LRU of
//! minted leaves renewed well before expiry, minting on tokio's blocking pool (never on an async
//! worker), one mint per name however many first handshakes race, and the pingora `TlsAccept`
//! callbacks that pick the leaf by SNI and record the SNI for the request phase.
//! Must not: hand out a certificate for a name that is not routed, or block a worker thread.

use async_trait::async_trait;
use lru::LruCache;
use openssl::ssl::NameType;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::tls::ext;
use std::any::Any;
use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::OnceCell;

use super::ca::{Ca, Leaf};
use super::conn::{ConnState, Limits, Permit};
use super::metrics;
use crate::host::normalize;
use crate::logging::Throttle;

type Slot = Arc<OnceCell<Arc<Leaf>>>;

pub struct CertStore {
    ca: Arc<Ca>,
    names: HashSet<String>,
    lifetime: Duration,
    cache: Mutex<LruCache<String, Slot>>,
    mints: AtomicU64,
}

impl CertStore {
    /// `names` are the hosts that may get a certificate (`localhost` is always added).
    pub fn new(ca: Arc<Ca>, names: &[String], lifetime: Duration, capacity: usize) -> Self {
        let mut set: HashSet<String> = names.iter().map(|n| normalize(n)).collect();
        set.insert("localhost".into());
        CertStore {
            ca,
            names: set,
            lifetime,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("capacity is at least 1"),
            )),
            mints: AtomicU64::new(0),
        }
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    pub fn serves(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// How many leaves this store has minted.
    #[cfg(test)]
    pub fn minted(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    /// A leaf is renewed once two thirds of its lifetime have passed.
    fn fresh(&self, leaf: &Leaf, now: SystemTime) -> bool {
        let total = leaf
            .not_after
            .duration_since(leaf.not_before)
            .unwrap_or_default();
        let renew_at = leaf.not_before + total.mul_f64(2.0 / 3.0);
        now < renew_at
    }

    /// The slot for `name`: the cached one, or a new empty one when absent or due for renewal.
    fn slot(&self, name: &str) -> Slot {
        let mut cache = self.cache.lock().unwrap();
        if let Some(slot) = cache.get(name) {
            match slot.get() {
                Some(leaf) if !self.fresh(leaf, SystemTime::now()) => {}
                _ => return slot.clone(),
            }
        }
        let slot: Slot = Arc::new(OnceCell::new());
        cache.put(name.to_string(), slot.clone());
        slot
    }

    /// The leaf for a served `name`, minting it (once, off the async workers) when needed.
    pub async fn get(&self, name: &str) -> Result<Arc<Leaf>, String> {
        if !self.serves(name) {
            return Err(format!("{name:?} is not a routed host"));
        }
        let slot = self.slot(name);
        let leaf = slot
            .get_or_try_init(|| async {
                let ca = self.ca.clone();
                let owned = name.to_string();
                let lifetime = self.lifetime;
                let leaf = tokio::task::spawn_blocking(move || ca.mint(&owned, lifetime))
                    .await
                    .map_err(|e| format!("minting task failed: {e}"))??;
                self.mints.fetch_add(1, Ordering::Relaxed);
                metrics::CERTS_MINTED.inc();
                log::debug!("minted a certificate for {name}");
                Ok::<_, String>(Arc::new(leaf))
            })
            .await?;
        Ok(leaf.clone())
    }
}

/// pingora's TLS callbacks for the sidecar listeners.
pub struct TlsCallbacks {
    pub store: Arc<CertStore>,
    pub limits: Arc<Limits>,
    /// Set for a connection inside a CONNECT tunnel: the route is the CONNECT target, not the
    /// SNI.
    pub pin: Option<Pinned>,
}

/// A tunnelled connection's route, fixed by its CONNECT request before the TLS handshake.
pub struct Pinned {
    /// The CONNECT target's host (routed, normalized).
    pub target: String,
    /// The connection's slot, taken when the CONNECT arrived; handed to its [`ConnState`].
    pub permit: Mutex<Option<Permit>>,
}

/// Refused handshakes are logged at most a few times per interval: a client trying thousands
/// of names must not flood the log (the metric counts every one).
static REFUSED_LOG: Throttle = Throttle::new(10, Duration::from_secs(10));

#[async_trait]
impl TlsAccept for TlsCallbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let sni = ssl.servername(NameType::HOST_NAME).map(normalize);
        let sni = match (&self.pin, sni) {
            // In a tunnel the target's certificate, unless the client names another host this
            // sidecar serves: it then gets that host's certificate, so that it can read the
            // 421 every request on this connection is answered with.
            (Some(pin), Some(sni)) if sni != pin.target && self.store.serves(&sni) => Some(sni),
            (Some(pin), _) => Some(pin.target.clone()),
            (None, sni) => sni,
        };
        let Some(sni) = sni else {
            if let Some(more) = REFUSED_LOG.allow() {
                log::warn!(
                    "refused TLS handshake: the client sent no SNI (clients that dial an IP \
                     address send none; use a routed host name){more}"
                );
            }
            metrics::HANDSHAKES_REFUSED
                .with_label_values(&["no_sni"])
                .inc();
            return;
        };
        if !self.store.serves(&sni) {
            if let Some(more) = REFUSED_LOG.allow() {
                let shown: String = sni.chars().take(64).collect();
                let cut = if shown.len() < sni.len() { "…" } else { "" };
                log::warn!("refused TLS handshake for SNI {shown:?}{cut}: not a routed host{more}");
            }
            metrics::HANDSHAKES_REFUSED
                .with_label_values(&["unknown_sni"])
                .inc();
            return;
        }
        let leaf = match self.store.get(&sni).await {
            Ok(leaf) => leaf,
            Err(e) => {
                log::error!("refused TLS handshake for SNI {sni:?}: {e}");
                metrics::HANDSHAKES_REFUSED
                    .with_label_values(&["mint_failed"])
                    .inc();
                return;
            }
        };
        // The leaf alone: the CA is the client's trust anchor, so sending it too only made
        // every client parse one more certificate per handshake.
        let set = ext::ssl_use_certificate(ssl, &leaf.cert)
            .and_then(|_| ext::ssl_use_private_key(ssl, &leaf.key));
        if let Err(e) = set {
            log::error!("cannot install the certificate for {sni:?}: {e}");
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let sni = ssl.servername(NameType::HOST_NAME).map(normalize);
        let Some(pin) = &self.pin else {
            let permit = self.limits.try_admit();
            return Some(Arc::new(ConnState::new(sni?, permit)));
        };
        // A client may leave out the SNI (the CONNECT target already names the host); one it
        // sends must be the target's.
        let misdirected = sni.filter(|s| *s != pin.target).map(|s| {
            format!(
                "Misdirected Request: TLS server name {s:?} does not match the CONNECT target {:?}",
                pin.target
            )
        });
        let permit = pin.permit.lock().ok().and_then(|mut p| p.take());
        let mut state = ConnState::new(pin.target.clone(), permit);
        state.misdirected = misdirected;
        Some(Arc::new(state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(lifetime: Duration) -> Arc<CertStore> {
        let (ca, _) = Ca::create(&["api.github.com".into()], Duration::from_secs(86400)).unwrap();
        Arc::new(CertStore::new(
            Arc::new(ca),
            &["api.github.com".into()],
            lifetime,
            16,
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_requests_mint_once() {
        let s = store(Duration::from_secs(3600));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move { s.get("api.github.com").await }));
        }
        let mut serials = HashSet::new();
        for t in tasks {
            let leaf = t.await.unwrap().unwrap();
            serials.insert(
                leaf.cert
                    .serial_number()
                    .to_bn()
                    .unwrap()
                    .to_hex_str()
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(serials.len(), 1);
        assert_eq!(s.minted(), 1);
    }

    #[tokio::test]
    async fn unrouted_names_get_nothing() {
        let s = store(Duration::from_secs(3600));
        assert!(s.get("evil.example.com").await.is_err());
        assert!(s.get("localhost").await.is_ok());
        assert_eq!(s.minted(), 1);
    }

    #[tokio::test]
    async fn leaves_renew_before_expiry() {
        // A 1 s lifetime with 300 s backdating is already past two thirds: every get renews.
        let s = store(Duration::from_secs(1));
        let a = s.get("api.github.com").await.unwrap();
        let b = s.get("api.github.com").await.unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        let s = store(Duration::from_secs(3600));
        let a = s.get("api.github.com").await.unwrap();
        let b = s.get("api.github.com").await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn normalize_names() {
        assert_eq!(normalize("API.GitHub.com."), "api.github.com");
    }
}
