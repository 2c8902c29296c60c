//! `proxypilot health`: is a sidecar on this machine answering? For container health checks
//! (the slim image has no curl): `GET https://localhost:PORT/healthz` with SNI `localhost`,
//! exit 0 on `200`, 1 with the reason otherwise.

use clap::Args;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// Check that the sidecar on this machine answers (exit 0) or say why not (exit 1).
#[derive(Args)]
pub struct HealthArgs {
    /// The sidecar's port [default: PORT from the environment, else 443].
    #[arg(long)]
    pub port: Option<u16>,
    /// Verify the sidecar's certificate against this CA (its ca.pem); without it the check
    /// only asks whether something answers (it sends nothing secret).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Give up after this long.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
}

pub fn run(a: HealthArgs) -> Result<(), String> {
    let port = match a.port {
        Some(p) => p,
        None => match std::env::var("PORT") {
            Ok(p) => p
                .trim()
                .parse()
                .map_err(|_| format!("PORT: {p:?} is not a port number"))?,
            Err(_) => 443,
        },
    };
    let timeout =
        crate::timeouts::parse_duration(&a.timeout).map_err(|e| format!("--timeout: {e}"))?;
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    match &a.ca {
        Some(ca) => {
            for c in crate::trust::ca_file(ca)? {
                let _ = b.cert_store_mut().add_cert(c);
            }
            b.set_verify(SslVerifyMode::PEER);
        }
        None => b.set_verify(SslVerifyMode::NONE),
    }
    let connector = b.build();
    let mut last = String::new();
    for addr in [
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ] {
        match check(&connector, addr, timeout) {
            Ok(()) => {
                println!("ok: https://localhost:{port}/healthz answered 200 ({addr})");
                return Ok(());
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(format!("sidecar not healthy: {last}"))
}

fn check(connector: &SslConnector, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|_| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect("localhost", tcp)
        .map_err(|e| format!("TLS: {e}"))?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = tls.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.lines().next().unwrap_or("").to_string();
    if status.starts_with("HTTP/1.1 200") {
        Ok(())
    } else if status.is_empty() {
        Err("no answer".into())
    } else {
        Err(format!("answered {status:?}"))
    }
}
