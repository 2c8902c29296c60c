//! Timeouts that form a contract between the sidecar and the tokenizer, side by side with the
//! reason they relate, and the duration format both programs read (`90s`, `10m`, `365d`).
//! Each program's own timeouts live in its config.

use std::time::Duration;

/// The sidecar closes a pooled connection to the tokenizer after this long unused...
pub const SIDECAR_POOL_IDLE: Duration = Duration::from_secs(50);

/// ...and the tokenizer keeps an idle client connection this long: longer, so that the sidecar
/// always closes first and never sends a request on a connection the tokenizer is closing
/// (pingora does not retry a POST that met a closed connection: the client would get a 502).
pub const TOKENIZER_CLIENT_IDLE: Duration = Duration::from_secs(75);

const _: () = assert!(SIDECAR_POOL_IDLE.as_secs() < TOKENIZER_CLIENT_IDLE.as_secs());

/// The tokenizer's pooled connections to upstream APIs are dropped after this long unused
/// (APIs close idle connections after 60-120 s themselves).
pub const TOKENIZER_UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// Timeouts longer than this use tokio's timers, which are removed when cancelled. Pingora's
/// faster timer wheel keeps every timeout it armed until its deadline, so a 10-minute read
/// timeout made memory grow with traffic for 10 minutes (the soak test saw +27 MiB at
/// 770 requests/s). Both programs set it; a sidecar config file may override it.
pub const FAST_TIMER_MAX_SECS: u64 = 30;

/// A human duration (`90s`, `10m`, `1h`, `365d`); the error quotes the input (never a secret).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 90s, 10m, 1h or 365d ({e})"))
}
