//! Pre-connected spare connections to the tokenizer.
//!
//! A tokenizer that closes every connection (the reference does) makes each request pay a TCP
//! handshake, and a TLS one for an `https://` tokenizer. This keeps a few connections already
//! open (and their TLS handshake done) and hands one to pingora whenever it needs a new
//! connection (through `PeerOptions::custom_l4`), refilling in the background. For an
//! `https://` tokenizer the TLS is ours: the stream goes to pingora as a virtual socket, and the
//! peer is plain HTTP to pingora, so every connection (spare or not) is made here, verified
//! against the same roots and name.
//! Spares older than `max_age`, or closed by the tokenizer meanwhile, are dropped unused.
//! Owns: the spare queue and its refill; pingora's pool still owns connection reuse.
//! Must not: hand out a connection the peer has already closed, or hold more than `want`.

use async_trait::async_trait;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::{X509VerifyResult, X509};
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, ErrorType, OrErr, Result};
use std::collections::VecDeque;
use std::net::SocketAddr as InetAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use super::metrics;

pub struct Spares {
    want: usize,
    max_age: Duration,
    connect_timeout: Duration,
    inner: Arc<Inner>,
}

/// TLS to an `https://` tokenizer: verified against `roots`, for `host` (SNI and name check).
pub struct TlsTo {
    connector: SslConnector,
    host: String,
}

impl TlsTo {
    pub fn new(host: &str, roots: &[X509]) -> std::result::Result<Self, String> {
        let mut b = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| format!("TLS to the tokenizer: {e}"))?;
        // `roots` holds the system bundle too: the builder's default paths point into the
        // vendored OpenSSL's own directory, which holds none.
        for c in roots {
            // A root listed twice (system file plus `ca`) is not an error.
            let _ = b.cert_store_mut().add_cert(c.clone());
        }
        b.set_verify(SslVerifyMode::PEER);
        b.set_alpn_protos(b"\x08http/1.1")
            .map_err(|e| format!("TLS to the tokenizer: {e}"))?;
        Ok(TlsTo {
            connector: b.build(),
            host: host.to_string(),
        })
    }
}

/// One connection to the tokenizer, before pingora gets it.
enum Conn {
    Tcp(TcpStream),
    Tls(SslStream<TcpStream>),
}

#[derive(Default)]
struct Inner {
    queue: Mutex<VecDeque<(Instant, InetAddr, Conn)>>,
    /// Connections being opened right now, so refills never overshoot `want`.
    opening: AtomicUsize,
    tls: Option<TlsTo>,
}

impl std::fmt::Debug for Spares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Spares(want={}, tls={})",
            self.want,
            self.inner.tls.is_some()
        )
    }
}

/// Still open and silent? A closed peer reads EOF; a peer that sent data is not ours to use.
/// Under TLS a read also consumes what the server may send after its handshake (session
/// tickets), which is not data.
fn alive(c: &mut Conn) -> bool {
    match c {
        Conn::Tcp(s) => {
            let mut b = [0u8; 1];
            matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
        Conn::Tls(s) => {
            let mut b = [0u8; 1];
            let mut buf = ReadBuf::new(&mut b);
            let mut cx = Context::from_waker(Waker::noop());
            Pin::new(s).poll_read(&mut cx, &mut buf).is_pending()
        }
    }
}

/// A TLS stream handed to pingora as a socket: pingora speaks plain HTTP/1.1 over it.
#[derive(Debug)]
struct TlsSocket(SslStream<TcpStream>);

impl VirtualSocket for TlsSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> std::io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.0.get_ref().set_nodelay(true),
            // TCP keepalive and the rest: spares live for seconds, the tokenizer decides more.
            _ => Ok(()),
        }
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl From<Conn> for Stream {
    fn from(c: Conn) -> Stream {
        match c {
            Conn::Tcp(s) => s.into(),
            Conn::Tls(s) => VirtualSocketStream::new(Box::new(TlsSocket(s))).into(),
        }
    }
}

/// A new connection to the tokenizer: TCP, then TLS if it is `https://`.
async fn open(inner: &Inner, addr: InetAddr, timeout: Duration) -> Result<Conn> {
    let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .or_err(ErrorType::ConnectTimedout, "connecting to the tokenizer")?
        .or_err(ErrorType::ConnectRefused, "connecting to the tokenizer")?;
    let _ = s.set_nodelay(true);
    let Some(tls) = &inner.tls else {
        return Ok(Conn::Tcp(s));
    };
    let ssl = tls
        .connector
        .configure()
        .and_then(|c| c.into_ssl(&tls.host))
        .or_err(ErrorType::TLSHandshakeFailure, "TLS to the tokenizer")?;
    let mut s =
        SslStream::new(ssl, s).or_err(ErrorType::TLSHandshakeFailure, "TLS to the tokenizer")?;
    match tokio::time::timeout(timeout, Pin::new(&mut s).connect()).await {
        Err(_) => Error::e_explain(
            ErrorType::ConnectTimedout,
            "TLS handshake with the tokenizer",
        ),
        Ok(Err(e)) => {
            let what = format!("TLS handshake with the tokenizer {}", tls.host);
            let verify = s.ssl().verify_result();
            if verify != X509VerifyResult::OK {
                Error::e_because(
                    ErrorType::InvalidCert,
                    what,
                    verify.error_string().to_string(),
                )
            } else {
                Error::e_because(ErrorType::TLSHandshakeFailure, what, e.to_string())
            }
        }
        Ok(Ok(())) => Ok(Conn::Tls(s)),
    }
}

impl Spares {
    /// `tls`: the tokenizer is `https://`; every connection is then made (and verified) here.
    pub fn new(
        want: usize,
        max_age: Duration,
        connect_timeout: Duration,
        tls: Option<TlsTo>,
    ) -> Self {
        Spares {
            want,
            max_age,
            connect_timeout,
            inner: Arc::new(Inner {
                tls,
                ..Inner::default()
            }),
        }
    }

    /// A live spare for `addr`, if one is waiting.
    fn take(&self, addr: InetAddr) -> Option<Conn> {
        let mut q = self.inner.queue.lock().unwrap();
        while let Some((born, a, mut c)) = q.pop_front() {
            if a == addr && born.elapsed() < self.max_age && alive(&mut c) {
                return Some(c);
            }
        }
        None
    }

    /// Open connections in the background until `want` are waiting or opening.
    fn refill(&self, addr: InetAddr) {
        let inner = &self.inner;
        loop {
            let have = inner.queue.lock().unwrap().len() + inner.opening.load(Ordering::SeqCst);
            if have >= self.want {
                return;
            }
            inner.opening.fetch_add(1, Ordering::SeqCst);
            let inner = inner.clone();
            let timeout = self.connect_timeout;
            tokio::spawn(async move {
                match open(&inner, addr, timeout).await {
                    Ok(c) => inner
                        .queue
                        .lock()
                        .unwrap()
                        .push_back((Instant::now(), addr, c)),
                    Err(e) => {
                        log::debug!("could not pre-connect a spare to the tokenizer at {addr}: {e}")
                    }
                }
                inner.opening.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}

#[async_trait]
impl L4Connect for Spares {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let Some(&inet) = addr.as_inet() else {
            return Err(Error::explain(
                ErrorType::ConnectError,
                "spares only pre-connect TCP peers",
            ));
        };
        let spare = self.take(inet);
        self.refill(inet);
        if let Some(c) = spare {
            metrics::SPARES_USED.inc();
            return Ok(c.into());
        }
        Ok(open(&self.inner, inet, self.connect_timeout).await?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn hands_out_live_spares_and_refills() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acc = accepted.clone();
        tokio::spawn(async move {
            let mut keep = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                keep.push(s);
            }
        });
        let spares = Spares::new(2, Duration::from_secs(30), Duration::from_secs(2), None);
        let paddr = SocketAddr::Inet(addr);
        // First call: no spare yet, connects directly and starts the refill.
        spares.connect(&paddr).await.unwrap();
        for _ in 0..100 {
            if spares.inner.queue.lock().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(spares.inner.queue.lock().unwrap().len(), 2);
        let used = metrics::SPARES_USED.get();
        spares.connect(&paddr).await.unwrap();
        assert_eq!(metrics::SPARES_USED.get(), used + 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // 1 direct + 2 spares + 1 refill; never more than `want` waiting.
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        assert!(spares.inner.queue.lock().unwrap().len() <= 2);
    }

    #[tokio::test]
    async fn closed_spares_are_skipped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spares = Spares::new(1, Duration::from_secs(30), Duration::from_secs(2), None);
        let c = TcpStream::connect(addr).await.unwrap();
        let (mut server_side, _) = listener.accept().await.unwrap();
        spares
            .inner
            .queue
            .lock()
            .unwrap()
            .push_back((Instant::now(), addr, Conn::Tcp(c)));
        server_side.shutdown().await.unwrap();
        drop(server_side);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(spares.take(addr).is_none());
    }
}
