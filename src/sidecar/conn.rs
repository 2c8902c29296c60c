//! The sidecar's client connections: how many may be open, and how long one may idle or dawdle.
//!
//! Owns: the cap on concurrent client connections (a [`Permit`] taken when a TLS handshake
//! completes, released when the connection is gone), the per-connection state the request
//! phases read ([`ConnState`]: the SNI, whether the connection was admitted, whether a request
//! is in flight), and the [`Guarded`] stream that enforces two deadlines on HTTP/1 connections
//! that pingora's own per-read timeouts cannot: a request's header must arrive whole within
//! `header_timeout` of its first byte (slowloris), and a connection between requests is closed
//! after `idle_timeout` (also before its first request). HTTP/2 connections use pingora's
//! `h2_idle_timeout` instead.
//! Must not: cut a request once its header is complete (bodies and long responses such as
//! SSE have their own timeouts), or count a connection twice.

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::metrics;

/// The limits on client connections, shared by every listener of the sidecar.
#[derive(Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    open: AtomicUsize,
    /// TLS handshakes that may run at once, on all listeners together.
    handshakes: Arc<Semaphore>,
}

/// At most this many TLS handshakes run at once; more wait for a turn. Handshakes are CPU work
/// (a few hundred microseconds each), so more at once only adds memory: each one in flight
/// holds OpenSSL's handshake state, and 1000 clients connecting at the same moment raised the
/// peak RSS by about 18 MiB (`make bench`'s memory row, issue 14's note).
pub const MAX_HANDSHAKES: usize = 32;

impl Limits {
    pub fn new(max_connections: usize, header_timeout: Duration, idle_timeout: Duration) -> Self {
        Limits {
            max_connections,
            header_timeout,
            idle_timeout,
            open: AtomicUsize::new(0),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        }
    }

    /// A turn to run a TLS handshake (see [`MAX_HANDSHAKES`]), held until it ends.
    pub async fn handshake_turn(&self) -> OwnedSemaphorePermit {
        self.handshakes
            .clone()
            .acquire_owned()
            .await
            .expect("the handshake semaphore is never closed")
    }

    /// A permit for one more connection, unless `max_connections` are open.
    pub fn try_admit(self: &Arc<Self>) -> Option<Permit> {
        let mut n = self.open.load(Ordering::Relaxed);
        loop {
            if n >= self.max_connections {
                metrics::CONNECTIONS_REFUSED.inc();
                return None;
            }
            match self
                .open
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    metrics::OPEN_CONNECTIONS.set((n + 1) as i64);
                    return Some(Permit(self.clone()));
                }
                Err(now) => n = now,
            }
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit(Arc<Limits>);

impl Drop for Permit {
    fn drop(&mut self) {
        let before = self.0.open.fetch_sub(1, Ordering::AcqRel);
        metrics::OPEN_CONNECTIONS.set(before.saturating_sub(1) as i64);
    }
}

/// What the request phases know about the connection a request came on. Made when the TLS
/// handshake completes and kept in the connection's TLS digest, so it lives exactly as long as
/// the connection.
#[derive(Debug)]
pub struct ConnState {
    /// The host this connection is pinned to, normalized: the TLS server name, or the CONNECT
    /// target for a connection in a tunnel.
    pub sni: String,
    /// Why every request on this connection gets 421 (a tunnel whose SNI is not its target).
    pub misdirected: Option<String>,
    permit: Option<Permit>,
    in_request: AtomicBool,
    /// Bumped when a request ends, so the stream sees each new wait for a request.
    requests_done: AtomicU64,
}

impl ConnState {
    pub fn new(sni: String, permit: Option<Permit>) -> Self {
        ConnState {
            sni,
            misdirected: None,
            permit,
            in_request: AtomicBool::new(false),
            requests_done: AtomicU64::new(0),
        }
    }

    /// False when the connection arrived while `max_connections` were open.
    pub fn admitted(&self) -> bool {
        self.permit.is_some()
    }

    /// A request's header has been read whole.
    pub fn request_started(&self) {
        self.in_request.store(true, Ordering::Release);
    }

    /// A request has ended (answered or failed); the connection waits for the next one.
    pub fn request_done(&self) {
        self.requests_done.fetch_add(1, Ordering::AcqRel);
        self.in_request.store(false, Ordering::Release);
    }
}

/// The state of a connection as found in a TLS digest.
pub fn state_of(digest: Option<&Arc<SslDigest>>) -> Option<&ConnState> {
    digest.and_then(|d| d.extension.get::<ConnState>())
}

/// Before the TLS handshake: the whole first TLS record (the ClientHello) must arrive within
/// the deadline, and be a TLS handshake record at all. A connection that sends nothing, a few
/// bytes, or not TLS is dropped then rather than after pingora's 60 s handshake timeout. The
/// bytes read are put back for the handshake.
pub struct HelloDeadline(pub Arc<Limits>);

/// Largest TLS record (RFC 8446 §5.1: 2^14 plus room for expansion).
const MAX_RECORD: usize = (1 << 14) + 2048;

#[async_trait]
impl PreTlsProcess for HelloDeadline {
    /// Once the ClientHello is in, wait for a handshake turn and hold it through the handshake.
    async fn process_and_hold(
        &self,
        stream: &mut L4Stream,
    ) -> pingora_error::Result<Option<Box<dyn std::any::Any + Send + Sync>>> {
        self.process(stream).await?;
        Ok(Some(Box::new(self.0.handshake_turn().await)))
    }

    /// The rest of the handshake gets the header deadline too (pingora alone allows 60 s): a
    /// client that sends its ClientHello and stalls holds a turn no longer than that.
    fn handshake_timeout(&self) -> Option<Duration> {
        Some(self.0.header_timeout)
    }

    async fn process(&self, stream: &mut L4Stream) -> pingora_error::Result<()> {
        use pingora_error::{Error, ErrorType};
        use tokio::io::AsyncReadExt;
        let read = async {
            let mut head = [0u8; 5];
            stream.read_exact(&mut head).await?;
            // A handshake record (22) of TLS 1.x (major version 3).
            let len = u16::from_be_bytes([head[3], head[4]]) as usize;
            if head[0] != 22 || head[1] != 3 || len == 0 || len > MAX_RECORD {
                return Ok::<_, std::io::Error>(None);
            }
            let mut record = vec![0u8; 5 + len];
            record[..5].copy_from_slice(&head);
            stream.read_exact(&mut record[5..]).await?;
            Ok(Some(record))
        };
        match tokio::time::timeout(self.0.header_timeout, read).await {
            Ok(Ok(Some(record))) => {
                stream.rewind(&record);
                Ok(())
            }
            Ok(Ok(None)) => Error::e_explain(ErrorType::HandshakeError, "not a TLS ClientHello"),
            Ok(Err(e)) => Error::e_because(ErrorType::HandshakeError, "reading the ClientHello", e),
            Err(_) => {
                metrics::CLIENT_TIMEOUTS
                    .with_label_values(&["tls_hello"])
                    .inc();
                Error::e_explain(ErrorType::HandshakeError, "no ClientHello in time")
            }
        }
    }
}

/// Wraps the sidecar's HTTP application: every accepted connection's stream is [`Guarded`].
pub struct GuardedApp<A> {
    pub app: Arc<A>,
    pub limits: Arc<Limits>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let guarded = Guarded::new(stream, &self.limits);
        self.app.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

/// A client stream with the header and idle deadlines (HTTP/1 only).
#[derive(Debug)]
pub struct Guarded {
    inner: Stream,
    digest: Option<Arc<SslDigest>>,
    /// None for HTTP/2 (and anything without our connection state): reads pass through.
    deadlines: Option<Deadlines>,
    refusing: Option<Refusing>,
}

#[derive(Debug)]
struct Deadlines {
    header_timeout: Duration,
    idle_timeout: Duration,
    /// `requests_done` when this wait for a request began.
    seen_done: u64,
    /// Whether bytes of the next request header have arrived.
    header_started: bool,
    /// The header's bytes so far, and whether its end (an empty line) has been seen.
    header_bytes: usize,
    header_done: bool,
    /// Whether the request line has begun, and the last bytes seen since, to find the empty
    /// line and bare LFs across reads.
    started: bool,
    tail: [u8; 3],
    /// When the current wait ends (None: no deadline now, a request is being served).
    deadline: Option<Instant>,
    /// One timer per connection, made the first time a read waits and then moved to the
    /// current `deadline` only when a read would wait again (with the instant it is set to).
    timer: Option<(Pin<Box<Sleep>>, Instant)>,
}

/// Largest request header (request line and fields) an HTTP/1 client may send; HTTP/2 clients
/// get the same as their SETTINGS_MAX_HEADER_LIST_SIZE. Pingora alone would buffer 1 MiB.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Why a request header was refused before pingora saw it whole.
enum Refusal {
    TooSlow,
    TooLarge,
    BareLf,
}

impl Refusal {
    /// The whole HTTP/1.1 answer, with Connection: close.
    fn answer(&self) -> Vec<u8> {
        let (status, reason) = match self {
            Refusal::TooSlow => ("408 Request Timeout", "request header not complete in time"),
            Refusal::TooLarge => (
                "431 Request Header Fields Too Large",
                "request header over 32 KiB",
            ),
            Refusal::BareLf => (
                "400 Bad Request",
                "bare LF in the request header: lines end in CR LF",
            ),
        };
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{reason}\n",
            reason.len() + 1
        )
        .into_bytes()
    }

    fn kind(&self) -> &'static str {
        match self {
            Refusal::TooSlow => "header",
            Refusal::TooLarge => "header_too_large",
            Refusal::BareLf => "bare_lf",
        }
    }
}

impl Deadlines {
    fn new(header_timeout: Duration, idle_timeout: Duration) -> Self {
        Deadlines {
            header_timeout,
            idle_timeout,
            seen_done: 0,
            header_started: false,
            header_bytes: 0,
            header_done: false,
            started: false,
            tail: [0; 3],
            deadline: Some(Instant::now() + idle_timeout),
            timer: None,
        }
    }

    /// Poll the timer for the current deadline (a header wait with none gets the header
    /// deadline): ready when it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let header_timeout = self.header_timeout;
        let at = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + header_timeout);
        let (timer, timer_at) = self
            .timer
            .get_or_insert_with(|| (Box::pin(tokio::time::sleep_until(at)), at));
        if *timer_at != at {
            timer.as_mut().reset(at);
            *timer_at = at;
        }
        timer.as_mut().poll(cx)
    }

    /// Look at newly read header bytes: find the header's end (an empty line), refuse a bare
    /// LF or a header over [`MAX_HEADER_BYTES`]. Bytes after the end (a body, a pipelined
    /// request) are not looked at.
    fn scan(&mut self, data: &[u8]) -> Result<(), Refusal> {
        if self.header_done {
            return Ok(());
        }
        let mut rest = data;
        if !self.started {
            // Empty lines before the request line are allowed (RFC 9112 §2.2).
            let skip = rest
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(rest.len());
            self.count(skip)?;
            rest = &rest[skip..];
            if rest.is_empty() {
                return Ok(());
            }
            self.started = true;
        }
        // Only line ends matter: jump from LF to LF (memchr) instead of looking at every byte.
        let before = |i: usize, k: usize| -> u8 {
            // The byte `k` places before `rest[i]`, from the last read's tail if need be.
            if i >= k {
                rest[i - k]
            } else {
                self.tail[3 - (k - i)]
            }
        };
        for lf in memchr::memchr_iter(b'\n', rest) {
            if self.header_bytes + lf + 1 > MAX_HEADER_BYTES {
                return Err(Refusal::TooLarge);
            }
            if before(lf, 1) != b'\r' {
                return Err(Refusal::BareLf);
            }
            if before(lf, 3) == b'\r' && before(lf, 2) == b'\n' {
                self.header_bytes += lf + 1;
                self.header_done = true;
                return Ok(());
            }
        }
        self.count(rest.len())?;
        let n = rest.len().min(3);
        let mut tail = [0; 3];
        for (k, t) in tail.iter_mut().enumerate() {
            // The last three bytes seen: from `rest` where it has them, else the old tail.
            let back = 3 - k;
            *t = if back <= rest.len() {
                rest[rest.len() - back]
            } else {
                self.tail[3 - (back - n)]
            };
        }
        self.tail = tail;
        Ok(())
    }

    /// Count `n` more header bytes; over [`MAX_HEADER_BYTES`] is a refusal.
    fn count(&mut self, n: usize) -> Result<(), Refusal> {
        self.header_bytes += n;
        if self.header_bytes > MAX_HEADER_BYTES {
            return Err(Refusal::TooLarge);
        }
        Ok(())
    }
}

impl Guarded {
    fn new(inner: Stream, limits: &Limits) -> Self {
        let digest = inner.get_ssl_digest();
        let h2 = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        let deadlines = (!h2 && state_of(digest.as_ref()).is_some())
            .then(|| Deadlines::new(limits.header_timeout, limits.idle_timeout));
        Guarded {
            inner,
            digest,
            deadlines,
            refusing: None,
        }
    }

    /// Start answering a refused header; the read fails once the answer is written (or could
    /// not be within a couple of seconds).
    fn refuse(&mut self, cx: &mut Context<'_>, why: Refusal) -> Poll<std::io::Result<()>> {
        metrics::CLIENT_TIMEOUTS
            .with_label_values(&[why.kind()])
            .inc();
        let kind = match why {
            Refusal::TooSlow => std::io::ErrorKind::TimedOut,
            _ => std::io::ErrorKind::InvalidData,
        };
        self.refusing = Some(Refusing {
            answer: why.answer(),
            written: 0,
            kind,
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(2))),
        });
        self.poll_refusing(cx)
    }

    fn poll_refusing(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = self.refusing.as_mut().expect("refusing");
        while r.written < r.answer.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &r.answer[r.written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                Poll::Ready(Ok(n)) => r.written += n,
                Poll::Pending => {
                    if r.deadline.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    break;
                }
            }
        }
        let flushed =
            r.written == r.answer.len() && Pin::new(&mut self.inner).poll_flush(cx).is_ready();
        if r.written == r.answer.len() && !flushed && r.deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let kind = r.kind;
        Poll::Ready(Err(std::io::Error::new(kind, "request header refused")))
    }
}

/// An answer to a refused request header, being written.
#[derive(Debug)]
struct Refusing {
    answer: Vec<u8>,
    written: usize,
    kind: std::io::ErrorKind,
    deadline: Pin<Box<Sleep>>,
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.refusing.is_some() {
            return this.poll_refusing(cx);
        }
        let (Some(d), Some(state)) = (this.deadlines.as_mut(), state_of(this.digest.as_ref()))
        else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if state.in_request.load(Ordering::Acquire) {
            d.deadline = None;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let done = state.requests_done.load(Ordering::Acquire);
        if done != d.seen_done {
            // A new wait for a request: the idle clock starts now.
            d.seen_done = done;
            d.header_started = false;
            d.header_bytes = 0;
            d.header_done = false;
            d.started = false;
            d.tail = [0; 3];
            d.deadline = Some(Instant::now() + d.idle_timeout);
        }
        if d.header_done {
            // The header is whole; pingora is about to start the request.
            d.deadline = None;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() && !d.header_started {
                    // The first byte of a request header: it must all arrive in time.
                    d.header_started = true;
                    d.deadline = Some(Instant::now() + d.header_timeout);
                }
                if let Err(why) = d.scan(new) {
                    return this.refuse(cx, why);
                }
                if d.header_done {
                    d.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if d.poll_deadline(cx).is_pending() {
                    return Poll::Pending;
                }
                d.deadline = None;
                if d.header_started {
                    this.refuse(cx, Refusal::TooSlow)
                } else {
                    // Idle: end of stream, which pingora takes as a client that left.
                    metrics::CLIENT_TIMEOUTS.with_label_values(&["idle"]).inc();
                    Poll::Ready(Ok(()))
                }
            }
        }
    }
}

use std::future::Future;

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.digest.clone()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_and_frees() {
        let limits = Arc::new(Limits::new(
            2,
            Duration::from_secs(1),
            Duration::from_secs(1),
        ));
        let a = limits.try_admit().unwrap();
        let b = limits.try_admit().unwrap();
        assert!(limits.try_admit().is_none());
        assert_eq!(limits.open(), 2);
        drop(a);
        let c = limits.try_admit().unwrap();
        assert!(limits.try_admit().is_none());
        drop((b, c));
        assert_eq!(limits.open(), 0);
    }

    fn deadlines() -> Deadlines {
        Deadlines::new(Duration::from_secs(1), Duration::from_secs(1))
    }

    #[test]
    fn header_scan_finds_the_end_across_reads() {
        let req = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nbody\nwith bare LFs\n";
        for split in 1..req.len() {
            let mut d = deadlines();
            d.scan(&req[..split])
                .unwrap_or_else(|_| panic!("split {split}"));
            d.scan(&req[split..])
                .unwrap_or_else(|_| panic!("split {split}"));
            assert!(d.header_done, "split {split}");
        }
    }

    /// The byte-at-a-time scan `Deadlines::scan` replaced: same answers on every input.
    fn scan_bytewise(d: &mut Deadlines, data: &[u8]) -> Result<(), &'static str> {
        for &b in data {
            if d.header_done {
                return Ok(());
            }
            d.header_bytes += 1;
            if d.header_bytes > MAX_HEADER_BYTES {
                return Err("large");
            }
            if !d.started {
                if b == b'\r' || b == b'\n' {
                    continue;
                }
                d.started = true;
            }
            if b == b'\n' {
                if d.tail[2] != b'\r' {
                    return Err("bare");
                }
                if d.tail[0] == b'\r' && d.tail[1] == b'\n' {
                    d.header_done = true;
                }
            }
            d.tail = [d.tail[1], d.tail[2], b];
        }
        Ok(())
    }

    #[test]
    fn header_scan_matches_a_byte_at_a_time_scan() {
        // Inputs built from the bytes that matter, cut into reads at every size from 1 up.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = [b'\r', b'\n', b'a', b':', b' '];
        for case in 0..20_000 {
            let len = (next() % 24) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let step = 1 + (case % 5);
            let (mut a, mut b) = (deadlines(), deadlines());
            for chunk in input.chunks(step) {
                let got = a.scan(chunk).map_err(|r| r.kind());
                let want = scan_bytewise(&mut b, chunk);
                let want = want.map_err(|e| {
                    if e == "bare" {
                        "bare_lf"
                    } else {
                        "header_too_large"
                    }
                });
                assert_eq!(got, want, "{input:?} in reads of {step}");
                if got.is_err() {
                    break;
                }
                assert_eq!(a.header_done, b.header_done, "{input:?} in reads of {step}");
                if !a.header_done {
                    assert_eq!((a.tail, a.started), (b.tail, b.started), "{input:?}");
                }
                assert_eq!(
                    a.header_bytes, b.header_bytes,
                    "{input:?} in reads of {step}"
                );
            }
        }
    }

    #[test]
    fn header_scan_refuses_bare_lf_and_oversize() {
        let mut d = deadlines();
        assert!(matches!(
            d.scan(b"GET / HTTP/1.1\r\nX-A: foo\nX-B: 1\r\n\r\n"),
            Err(Refusal::BareLf)
        ));
        let mut d = deadlines();
        assert!(matches!(d.scan(b"GET / HTTP/1.1\n"), Err(Refusal::BareLf)));
        let mut d = deadlines();
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES));
        assert!(matches!(d.scan(&big), Err(Refusal::TooLarge)));
        let mut d = deadlines();
        let mut fits = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        fits.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES - 100));
        fits.extend(b"\r\n\r\n");
        fits.extend(std::iter::repeat_n(b'b', 100_000)); // a body: not counted
        assert!(d.scan(&fits).is_ok() && d.header_done);
        for r in [Refusal::TooSlow, Refusal::TooLarge, Refusal::BareLf] {
            let a = String::from_utf8(r.answer()).unwrap();
            let (head, body) = a.split_once("\r\n\r\n").unwrap();
            assert!(
                head.contains(&format!("Content-Length: {}", body.len())),
                "{a}"
            );
        }
    }

    #[test]
    fn state_tracks_requests() {
        let limits = Arc::new(Limits::new(
            1,
            Duration::from_secs(1),
            Duration::from_secs(1),
        ));
        let s = ConnState::new("api.github.com".into(), limits.try_admit());
        assert!(s.admitted());
        let refused = ConnState::new("api.github.com".into(), limits.try_admit());
        assert!(!refused.admitted());
        s.request_started();
        assert!(s.in_request.load(Ordering::Acquire));
        s.request_done();
        assert!(!s.in_request.load(Ordering::Acquire));
        assert_eq!(s.requests_done.load(Ordering::Acquire), 1);
        drop(s);
        assert_eq!(limits.open(), 0);
    }
}
