//! Which certificates a TLS client of ours trusts: the system's roots plus extra CA files.
//!
//! Owns: reading a PEM CA file (errors name the file) and building the root set for outgoing
//! TLS (the sidecar's `https://` tokenizer, the tokenizer's upstream APIs).
//! Must not: trust anything not asked for (no "accept any certificate" switch).

use openssl::x509::X509;
use std::path::Path;

/// The roots for outgoing TLS: the system bundle (wherever this OS keeps it; the vendored
/// OpenSSL does not look there by itself) plus `extra`, already parsed CA certificates.
pub fn upstream_roots(extra: &[X509]) -> Vec<X509> {
    let mut roots = Vec::new();
    let probe = openssl_probe::probe();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .or(probe.cert_file);
    if let Some(path) = system {
        if let Ok(pem) = std::fs::read(&path) {
            roots.extend(X509::stack_from_pem(&pem).unwrap_or_default());
        }
    }
    roots.extend(extra.iter().cloned());
    roots
}

/// The certificates in a PEM CA file; the error names the file.
pub fn ca_file(path: &Path) -> Result<Vec<X509>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        _ => Err(format!("{}: no PEM certificate in it", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_name_themselves_in_errors() {
        let e = ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.starts_with("/nonexistent/ca.pem: "), "{e}");
        let e = ca_file(Path::new("/etc/hostname")).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let cert = rcgen::generate_simple_self_signed(vec!["x.example".into()]).unwrap();
        let extra = X509::from_pem(cert.cert.pem().as_bytes()).unwrap();
        let roots = upstream_roots(std::slice::from_ref(&extra));
        assert!(roots
            .iter()
            .any(|r| r.to_der().unwrap() == extra.to_der().unwrap()));
    }
}
