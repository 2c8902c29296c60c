//! The process's heap: fewer malloc arenas, and freed memory given back to the system.
//!
//! glibc keeps memory freed by finished connections in its arenas, so after a burst of clients
//! the process would stay at its peak size (`make bench`'s memory rows, in
//! docs/benchmarks.md, show the peak and the size after the clients left). A pingora background
//! service calls `malloc_trim` every few seconds; it runs inside pingora's runtime, so it
//! survives daemon mode's fork.
//! Because of that trim, `free` need not give memory back itself: `tune` raises glibc's trim
//! threshold so that a request's short-lived buffers (OpenSSL's 17 KiB record buffer is taken
//! and released on every read) do not cost an `madvise` and fresh page faults each time.
//! Must not: run on the request path.

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{background_service, BackgroundService};
use std::time::Duration;

pub const TRIM_EVERY: Duration = Duration::from_secs(10);

pub struct Trim;

#[async_trait]
impl BackgroundService for Trim {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => trim(),
            }
        }
    }
}

/// Free memory at the top of an arena is kept up to this size between trims.
pub const KEEP_ON_FREE: usize = 16 << 20;

/// At most this many malloc arenas. glibc's default (8 per core) gives each worker thread its
/// own, and a connection's memory freed in one cannot serve another thread: with 1000 TLS
/// keep-alive clients, 2 arenas peaked lower at the same throughput (the A/B is in the
/// closing note of the session that chose it; re-measure with `make bench --extras memory`).
pub const ARENAS: libc::c_int = 2;

/// Called first thing in `main`, before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() {
    // SAFETY: mallopt only sets glibc allocator parameters; the values are in range.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_ON_FREE as libc::c_int);
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas; any argument is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// The service to add next to a proxy service.
pub fn service() -> impl pingora_core::services::ServiceWithDependents {
    background_service("memory trim", Trim)
}
