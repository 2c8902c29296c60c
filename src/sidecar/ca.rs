//! The sidecar's certificate authority: create, load, check and sign.
//!
//! Owns: an ECDSA P-256 CA whose critical Name Constraints permit only the routed hosts and
//! `localhost` (pathlen 0, keyCertSign/cRLSign), its files (key written mode 0600, never
//! served), the check that the configured routes still fit an existing CA, and minting one leaf
//! (fresh P-256 key, random serial, SAN = the name, EKU serverAuth). Certificates are built by
//! `rcgen`; existing key files of any common format are read with `openssl`.
//! Must not: log or serve the CA key; mint for a name the CA does not permit.

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use rand_core::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// Leaves may be used this long before `not_before`, to absorb small clock differences.
const BACKDATE: Duration = Duration::from_secs(300);

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub x509: X509,
    /// The permitted DNS subtrees, or `None` when the CA carries no name constraints.
    permitted: Option<Vec<String>>,
    not_after: SystemTime,
}

/// A minted leaf certificate and its private key.
pub struct Leaf {
    pub cert: X509,
    pub key: PKey<Private>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // and 16 bytes long
    SerialNumber::from_slice(&b)
}

/// Does `name` fall within the DNS subtree `base` (RFC 5280 §4.2.1.10)?
pub fn within(name: &str, base: &str) -> bool {
    let name = crate::host::normalize(name);
    let base = crate::host::normalize(base);
    if let Some(sub) = base.strip_prefix('.') {
        return name.ends_with(&format!(".{sub}"));
    }
    name == base || name.ends_with(&format!(".{base}"))
}

impl Ca {
    /// A new CA permitting exactly `names` (plus `localhost`) for `lifetime`; returns the CA and
    /// its key in PEM.
    pub fn create(names: &[String], lifetime: Duration) -> Result<(Ca, String), String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("generating the CA key: {e}"))?;
        let mut permitted: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        if !permitted.iter().any(|n| n == "localhost") {
            permitted.push("localhost".into());
        }
        permitted.sort();
        permitted.dedup();

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "proxypilot");
        dn.push(
            DnType::CommonName,
            format!(
                "proxypilot sidecar CA {}",
                &hex::encode(random_serial().to_bytes())[..8]
            ),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(now + lifetime);
        params.serial_number = Some(random_serial());
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted
                .iter()
                .map(|n| GeneralSubtree::DnsName(n.to_string()))
                .collect(),
            // No IP address at all: without an iPAddress entry in either list, RFC 5280 leaves
            // IP names unconstrained, and a leaked key could mint for 1.2.3.4.
            excluded_subtrees: vec![
                GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
                GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
            ],
        });
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("signing the CA certificate: {e}"))?;
        let key_pem = key.serialize_pem();
        let cert_pem = cert.pem();
        let ca = Ca::from_pem(&cert_pem, &key_pem)?;
        Ok((ca, key_pem))
    }

    /// Parse a CA from PEM certificate and key (PKCS#8, SEC1 or PKCS#1).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
        let x509 =
            X509::from_pem(cert_pem.as_bytes()).map_err(|_| "not a PEM certificate".to_string())?;
        let pkey = PKey::private_key_from_pem(key_pem.as_bytes())
            .map_err(|_| "not a PEM private key".to_string())?;
        let cert_pub = x509
            .public_key()
            .map_err(|_| "certificate has no usable public key".to_string())?;
        if !pkey.public_eq(&cert_pub) {
            return Err("the key does not belong to the certificate".into());
        }
        let pkcs8 = pkey
            .private_key_to_pkcs8()
            .map_err(|_| "cannot convert the key to PKCS#8".to_string())?;
        let pkcs8_pem = pem_encode("PRIVATE KEY", &pkcs8);
        let key = KeyPair::from_pem(&pkcs8_pem).map_err(|e| format!("unsupported CA key: {e}"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| format!("cannot use the certificate as an issuer: {e}"))?;

        let der = x509.to_der().map_err(|_| "bad certificate".to_string())?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| "cannot parse the certificate".to_string())?;
        let is_ca = parsed
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err("the certificate is not a CA (basicConstraints CA:FALSE or absent)".into());
        }
        let permitted = permitted_of(&x509);
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(parsed.validity().not_after.timestamp().max(0) as u64);
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_string(),
            x509,
            permitted,
            not_after,
        })
    }

    /// Load the CA at `cert`/`key`. A key file that group or others may read or write is
    /// refused, as ssh refuses such private keys.
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, String> {
        let mode = fs::metadata(key)
            .map_err(|e| format!("reading {}: {e}", key.display()))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "CA key {} is open to group or others (mode {mode:04o}); run `chmod 600 {}`",
                key.display(),
                key.display()
            ));
        }
        let cert_pem =
            fs::read_to_string(cert).map_err(|e| format!("reading {}: {e}", cert.display()))?;
        let key_pem =
            fs::read_to_string(key).map_err(|e| format!("reading {}: {e}", key.display()))?;
        Ca::from_pem(&cert_pem, &key_pem)
            .map_err(|e| format!("CA {} / {}: {e}", cert.display(), key.display()))
    }

    /// Write this CA's certificate and `key_pem` (mode 0600, replacing atomically).
    pub fn save(&self, key_pem: &str, cert: &Path, key: &Path) -> Result<(), String> {
        for p in [cert, key] {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
        }
        write_atomic(key, key_pem.as_bytes(), 0o600)?;
        write_atomic(cert, self.cert_pem.as_bytes(), 0o644)?;
        Ok(())
    }

    /// The permitted DNS subtrees (None: unconstrained).
    pub fn permitted(&self) -> Option<&[String]> {
        self.permitted.as_deref()
    }

    /// Whether clients that enforce name constraints accept a leaf for `name` from this CA.
    pub fn permits(&self, name: &str) -> bool {
        match &self.permitted {
            None => true,
            Some(list) => list.iter().any(|b| within(name, b)),
        }
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Mint a leaf for `name`, valid for `lifetime` but never past the CA. Blocking (key
    /// generation and signing): call it off the async workers.
    pub fn mint(&self, name: &str, lifetime: Duration) -> Result<Leaf, String> {
        if !self.permits(name) {
            return Err(format!("the CA's name constraints do not permit {name:?}"));
        }
        self.sign_leaf(name, lifetime)
    }

    /// Sign a leaf without checking the name constraints (tests prove clients enforce them).
    fn sign_leaf(&self, name: &str, lifetime: Duration) -> Result<Leaf, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("generating a leaf key: {e}"))?;
        let mut params = CertificateParams::new(vec![name.to_string()])
            .map_err(|e| format!("{name:?} is not a valid DNS name: {e}"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let now = SystemTime::now();
        let not_before = now - BACKDATE;
        let not_after = (now + lifetime).min(self.not_after);
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("signing a leaf for {name:?}: {e}"))?;
        Ok(Leaf {
            cert: X509::from_der(cert.der()).map_err(|e| format!("leaf DER: {e}"))?,
            key: PKey::private_key_from_der(&key.serialize_der())
                .map_err(|e| format!("leaf key DER: {e}"))?,
            not_before,
            not_after,
        })
    }
}

/// Whether a CA certificate's name constraints exclude every IPv4 and IPv6 address.
pub fn excludes_all_ips(x509: &X509) -> bool {
    let Ok(der) = x509.to_der() else { return false };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    let Ok(Some(nc)) = parsed.name_constraints() else {
        return false;
    };
    let excluded: Vec<&[u8]> = nc
        .value
        .excluded_subtrees
        .iter()
        .flatten()
        .filter_map(|s| match &s.base {
            x509_parser::extensions::GeneralName::IPAddress(b) => Some(*b),
            _ => None,
        })
        .collect();
    excluded.contains(&&[0u8; 8][..]) && excluded.contains(&&[0u8; 32][..])
}

/// The permitted DNS subtrees of a CA certificate, or `None` when it has no name constraints.
pub fn permitted_of(x509: &X509) -> Option<Vec<String>> {
    let der = x509.to_der().ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).ok()?;
    let nc = parsed.name_constraints().ok()??;
    Some(
        nc.value
            .permitted_subtrees
            .iter()
            .flatten()
            .filter_map(|s| match &s.base {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
    )
}

fn pem_encode(tag: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {tag}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {tag}-----\n"));
    out
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let tmp: PathBuf = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))
}

/// Where the CA lives and what to do when it is missing or no longer fits.
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub lifetime: Duration,
}

/// An exclusive `flock` on a directory, held while the CA files in it are read or made, so two
/// processes starting at once cannot leave one's key beside the other's certificate.
struct DirLock {
    _file: fs::File,
}

impl DirLock {
    fn take(dir: &Path) -> Result<DirLock, String> {
        use std::os::unix::io::AsRawFd;
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let f = fs::File::open(dir).map_err(|e| format!("opening {}: {e}", dir.display()))?;
        // SAFETY: flock on a file descriptor we own; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "locking {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(DirLock { _file: f })
    }
}

impl CaFiles {
    fn lock(&self) -> Result<DirLock, String> {
        DirLock::take(self.key.parent().unwrap_or(Path::new(".")))
    }

    /// Load the CA, creating it when both files are missing. When the routes no longer fit its
    /// name constraints, refuse — or, with `recreate`, make a new one.
    pub fn load_or_create(&self, names: &[String], recreate: bool) -> Result<(Ca, bool), String> {
        let _lock = self.lock()?;
        let (has_cert, has_key) = (self.cert.exists(), self.key.exists());
        if !has_cert && !has_key {
            return self.create_locked(names).map(|ca| (ca, true));
        }
        if has_cert != has_key {
            let (present, missing) = if has_cert {
                (&self.cert, &self.key)
            } else {
                (&self.key, &self.cert)
            };
            return Err(format!(
                "CA file {} exists but {} is missing; restore it, or remove {} to create a new CA",
                present.display(),
                missing.display(),
                present.display()
            ));
        }
        let ca = Ca::load(&self.cert, &self.key)?;
        let misfits: Vec<&String> = names.iter().filter(|n| !ca.permits(n)).collect();
        let expired = ca.not_after() <= SystemTime::now();
        if misfits.is_empty() && !expired {
            if ca.permitted().is_none() {
                log::warn!(
                    "CA {} has no name constraints: clients trusting it trust it for every name",
                    self.cert.display()
                );
            } else if !excludes_all_ips(&ca.x509) {
                log::warn!(
                    "CA {} does not exclude IP addresses: its key could mint for any IP; \
                     re-create it with `proxypilot ca init --force`",
                    self.cert.display()
                );
            }
            return Ok((ca, false));
        }
        let problem = if expired {
            format!("CA {} has expired", self.cert.display())
        } else {
            format!(
                "CA {} does not permit {} (its name constraints allow {:?}); clients would reject \
                 those certificates",
                self.cert.display(),
                misfits
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                ca.permitted().unwrap_or_default()
            )
        };
        if !recreate {
            return Err(format!(
                "{problem}. Re-create it with `proxypilot ca init --force` (or start with \
                 --recreate-ca), then re-distribute ca.pem to the clients"
            ));
        }
        log::warn!("{problem}; creating a new CA as asked (--recreate-ca)");
        self.create_locked(names).map(|ca| (ca, true))
    }

    /// Make a new CA, replacing any (under the directory lock).
    pub fn create(&self, names: &[String]) -> Result<Ca, String> {
        let _lock = self.lock()?;
        self.create_locked(names)
    }

    fn create_locked(&self, names: &[String]) -> Result<Ca, String> {
        let (ca, key_pem) = Ca::create(names, self.lifetime)?;
        ca.save(&key_pem, &self.cert, &self.key)?;
        log::info!(
            "created CA {} (key {}, mode 0600) permitting {:?}",
            self.cert.display(),
            self.key.display(),
            ca.permitted().unwrap_or_default()
        );
        Ok(ca)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::verify::X509VerifyParam;
    use openssl::x509::X509StoreContext;
    use std::sync::Arc;

    /// Verify `leaf` against `ca` as a TLS client would for `name` (a host name, or an IP
    /// address when it parses as one): Ok or OpenSSL's reason.
    fn verify(ca: &X509, leaf: &X509, name: &str) -> Result<(), String> {
        let mut b = X509StoreBuilder::new().unwrap();
        b.add_cert(ca.clone()).unwrap();
        let mut param = X509VerifyParam::new().unwrap();
        match name.parse() {
            Ok(ip) => param.set_ip(ip).unwrap(),
            Err(_) => param.set_host(name).unwrap(),
        }
        b.set_param(&param).unwrap();
        let store = b.build();
        let mut ctx = X509StoreContext::new().unwrap();
        ctx.init(&store, leaf, &Stack::new().unwrap(), |c| {
            Ok(if c.verify_cert()? {
                Ok(())
            } else {
                Err(c.error().error_string().to_string())
            })
        })
        .unwrap()
    }

    #[test]
    fn within_subtrees() {
        assert!(within("api.github.com", "api.github.com"));
        assert!(within("x.api.github.com", "api.github.com"));
        assert!(!within("evilapi.github.com", "api.github.com"));
        assert!(!within("api.github.com", ".api.github.com"));
        assert!(within("a.api.github.com", ".api.github.com"));
        assert!(within("API.GitHub.com.", "api.github.com"));
    }

    #[test]
    fn constrained_ca_mints_only_permitted_names() {
        let (ca, _) = Ca::create(&["api.github.com".into()], Duration::from_secs(3600)).unwrap();
        assert!(ca.permits("api.github.com") && ca.permits("localhost"));
        assert!(!ca.permits("evil.example.com"));
        let leaf = ca
            .mint("api.github.com", Duration::from_secs(3600))
            .unwrap();
        assert_eq!(verify(&ca.x509, &leaf.cert, "api.github.com"), Ok(()));
        assert!(verify(&ca.x509, &leaf.cert, "evil.example.com").is_err());
        assert!(ca
            .mint("evil.example.com", Duration::from_secs(60))
            .is_err());
        // The constraint is real: a leaf the same CA signs for another name is rejected.
        let evil = ca
            .sign_leaf("evil.example.com", Duration::from_secs(60))
            .unwrap();
        let e = verify(&ca.x509, &evil.cert, "evil.example.com").unwrap_err();
        assert!(e.contains("permitted subtree violation"), "{e}");
        // key files of the CA round-trip
        let dir = std::env::temp_dir().join(format!("pp-ca-{}", std::process::id()));
        let files = CaFiles {
            cert: dir.join("ca.pem"),
            key: dir.join("ca-key.pem"),
            lifetime: Duration::from_secs(3600),
        };
        let (created, fresh) = files
            .load_or_create(&["api.github.com".into()], false)
            .unwrap();
        assert!(fresh);
        let mode = fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (loaded, fresh) = files
            .load_or_create(&["api.github.com".into()], false)
            .unwrap();
        assert!(!fresh);
        assert_eq!(loaded.cert_pem, created.cert_pem);
        // a route outside the constraints is refused unless asked to re-create
        let e = files
            .load_or_create(&["api.openai.com".into()], false)
            .err()
            .unwrap();
        assert!(e.contains("does not permit api.openai.com"), "{e}");
        let (again, fresh) = files
            .load_or_create(&["api.openai.com".into()], true)
            .unwrap();
        assert!(fresh && again.permits("api.openai.com"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ip_addresses_are_excluded_even_for_a_leaked_key() {
        let (ca, _) = Ca::create(&["api.github.com".into()], Duration::from_secs(3600)).unwrap();
        assert!(excludes_all_ips(&ca.x509));
        for ip in ["1.2.3.4", "127.0.0.1", "::1", "2606:50c0:8000::64"] {
            // Signed by the CA's own key, as someone holding a leaked key would.
            let leaf = ca.sign_leaf(ip, Duration::from_secs(60)).unwrap();
            let e = verify(&ca.x509, &leaf.cert, ip).unwrap_err();
            assert!(e.contains("excluded subtree violation"), "{ip}: {e}");
        }
        let old_style = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let old_style = X509::from_pem(old_style.cert.pem().as_bytes()).unwrap();
        assert!(!excludes_all_ips(&old_style));
    }

    #[test]
    fn key_open_to_others_is_refused() {
        let dir = std::env::temp_dir().join(format!("pp-ca-perm-{}", std::process::id()));
        let files = CaFiles {
            cert: dir.join("ca.pem"),
            key: dir.join("ca-key.pem"),
            lifetime: Duration::from_secs(3600),
        };
        files.create(&["api.github.com".into()]).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            fs::set_permissions(&files.key, fs::Permissions::from_mode(mode)).unwrap();
            let e = files
                .load_or_create(&["api.github.com".into()], false)
                .err()
                .unwrap_or_else(|| panic!("mode {mode:o} accepted"));
            assert!(e.contains("chmod 600"), "{e}");
        }
        fs::set_permissions(&files.key, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(files
            .load_or_create(&["api.github.com".into()], false)
            .is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn racing_creators_leave_a_matching_pair() {
        for round in 0..5 {
            let dir =
                std::env::temp_dir().join(format!("pp-ca-race-{}-{round}", std::process::id()));
            let files = Arc::new(CaFiles {
                cert: dir.join("ca.pem"),
                key: dir.join("ca-key.pem"),
                lifetime: Duration::from_secs(3600),
            });
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let f = files.clone();
                    std::thread::spawn(move || {
                        f.load_or_create(&["api.github.com".into()], false)
                            .map(|(ca, _)| ca.cert_pem)
                    })
                })
                .collect();
            let pems: Vec<String> = threads
                .into_iter()
                .map(|t| t.join().unwrap().unwrap())
                .collect();
            // Everyone got the same CA, and the files on disk match each other.
            assert!(pems.iter().all(|p| p == &pems[0]));
            let loaded = Ca::load(&files.cert, &files.key).unwrap();
            assert_eq!(loaded.cert_pem, pems[0]);
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn leaves_are_unique_and_bounded() {
        let (ca, _) = Ca::create(&["a.test".into()], Duration::from_secs(7200)).unwrap();
        let l1 = ca.mint("a.test", Duration::from_secs(3600)).unwrap();
        let l2 = ca
            .mint("a.test", Duration::from_secs(3600 * 24 * 365))
            .unwrap();
        assert_ne!(
            l1.cert.serial_number().to_bn().unwrap(),
            l2.cert.serial_number().to_bn().unwrap()
        );
        assert!(!l1.key.public_eq(&l2.key));
        assert!(l2.not_after <= ca.not_after());
    }
}
