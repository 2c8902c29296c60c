//! Pre-connected spare connections to the tokenizer.
//!
//! A tokenizer that closes every connection (the reference does) makes each request pay a TCP
//! handshake. This keeps a few connections already open and hands one to pingora whenever it
//! needs a new connection (through `PeerOptions::custom_l4`), refilling in the background.
//! Spares older than `max_age`, or closed by the tokenizer meanwhile, are dropped unused.
//! Owns: the spare queue and its refill; pingora's pool still owns connection reuse.
//! Must not: hand out a connection the peer has already closed, or hold more than `want`.

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_error::{Error, ErrorType, OrErr, Result};
use std::collections::VecDeque;
use std::net::SocketAddr as InetAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

use crate::metrics;

pub struct Spares {
    want: usize,
    max_age: Duration,
    connect_timeout: Duration,
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: Mutex<VecDeque<(Instant, InetAddr, TcpStream)>>,
    /// Connections being opened right now, so refills never overshoot `want`.
    opening: AtomicUsize,
}

impl std::fmt::Debug for Spares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spares(want={})", self.want)
    }
}

/// Still open and silent? A closed peer reads EOF; a peer that spoke first is not ours to use.
fn alive(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

impl Spares {
    pub fn new(want: usize, max_age: Duration, connect_timeout: Duration) -> Self {
        Spares {
            want,
            max_age,
            connect_timeout,
            inner: Arc::new(Inner::default()),
        }
    }

    /// A live spare for `addr`, if one is waiting.
    fn take(&self, addr: InetAddr) -> Option<TcpStream> {
        let mut q = self.inner.queue.lock().unwrap();
        while let Some((born, a, s)) = q.pop_front() {
            if a == addr && born.elapsed() < self.max_age && alive(&s) {
                return Some(s);
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
                let res = tokio::time::timeout(timeout, TcpStream::connect(addr)).await;
                if let Ok(Ok(s)) = res {
                    let _ = s.set_nodelay(true);
                    inner
                        .queue
                        .lock()
                        .unwrap()
                        .push_back((Instant::now(), addr, s));
                } else {
                    log::debug!("could not pre-connect a spare to the tokenizer at {addr}");
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
        if let Some(s) = spare {
            metrics::SPARES_USED.inc();
            return Ok(s.into());
        }
        let s = tokio::time::timeout(self.connect_timeout, TcpStream::connect(inet))
            .await
            .or_err(ErrorType::ConnectTimedout, "connecting to the tokenizer")?
            .or_err(ErrorType::ConnectRefused, "connecting to the tokenizer")?;
        Ok(s.into())
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
        let spares = Spares::new(2, Duration::from_secs(30), Duration::from_secs(2));
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
        let spares = Spares::new(1, Duration::from_secs(30), Duration::from_secs(2));
        let c = TcpStream::connect(addr).await.unwrap();
        let (mut server_side, _) = listener.accept().await.unwrap();
        spares
            .inner
            .queue
            .lock()
            .unwrap()
            .push_back((Instant::now(), addr, c));
        server_side.shutdown().await.unwrap();
        drop(server_side);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(spares.take(addr).is_none());
    }
}
