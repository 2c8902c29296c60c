//! `proxypilot ca`: create, show and time the sidecar's certificate authority.

use clap::{Args, Subcommand};
use std::path::PathBuf;

use crate::sidecar::ca::{self, Ca, CaFiles};
use crate::sidecar::config;

#[derive(Subcommand)]
pub enum CaCmd {
    /// Create the CA, permitting only the routed hosts and localhost.
    Init(CaInitArgs),
    /// Print the CA certificate (PEM) and its name constraints.
    Show(CaShowArgs),
    /// Time minting leaf certificates with a throwaway CA (for benchmarks).
    Bench(CaBenchArgs),
}

#[derive(Args)]
pub struct CaBenchArgs {
    /// How many leaves to mint.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
}

#[derive(Args)]
pub struct CaInitArgs {
    /// Take the hosts and CA paths from this config file.
    #[arg(short, long)]
    pub conf: Option<PathBuf>,
    /// Host to permit (repeatable; instead of -c).
    #[arg(long)]
    pub host: Vec<String>,
    #[arg(long, default_value = config::defaults::CA_CERT)]
    pub cert: PathBuf,
    #[arg(long, default_value = config::defaults::CA_KEY)]
    pub key: PathBuf,
    /// CA lifetime.
    #[arg(long, default_value = config::defaults::CA_LIFETIME_TEXT)]
    pub lifetime: String,
    /// Replace an existing CA.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct CaShowArgs {
    #[arg(long, default_value = config::defaults::CA_CERT)]
    pub cert: PathBuf,
}

pub fn init(a: CaInitArgs) -> Result<(), String> {
    let lifetime = config::parse_duration(&a.lifetime).map_err(|e| format!("--lifetime: {e}"))?;
    let (hosts, files) = match &a.conf {
        Some(path) => {
            let cfg = config::from_file(path, &config::process_env)?;
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

pub fn show(a: CaShowArgs) -> Result<(), String> {
    let pem = std::fs::read_to_string(&a.cert)
        .map_err(|e| format!("reading {}: {e}", a.cert.display()))?;
    // Showing needs no key: parse the certificate alone.
    let x509 = openssl::x509::X509::from_pem(pem.as_bytes())
        .map_err(|_| format!("{}: not a PEM certificate", a.cert.display()))?;
    println!("{}", pem.trim_end());
    eprintln!("certificate: {}", a.cert.display());
    eprintln!("valid: {} .. {}", x509.not_before(), x509.not_after());
    match ca::permitted_of(&x509) {
        Some(p) => eprintln!("name constraints: permitted DNS {p:?}"),
        None => eprintln!("name constraints: none (trusted for every name!)"),
    }
    Ok(())
}

pub fn bench(a: CaBenchArgs) -> Result<(), String> {
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
