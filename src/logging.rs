//! Logging: env_logger under `RUST_LOG`, with a ceiling on what other crates may say.
//!
//! Owns: the process's logger. Our own modules log at whatever level `RUST_LOG` asks; every
//! other crate (pingora, h2, tokio, openssl bindings, ...) is held at `info` or quieter,
//! whatever `RUST_LOG` says, because their `debug`/`trace` lines print request headers, wire
//! bytes and TLS state, and those hold sealed secrets, injected tokens and passwords.
//! Must not: let a third-party `debug` or `trace` line through, at any `RUST_LOG`.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `burst` events per `every`; the rest are counted and reported with the next one
/// allowed. For log lines a client can cause at will (refused handshakes, broken connections).
pub struct Throttle {
    burst: u32,
    every: Duration,
    /// Window start, events in this window, events suppressed since the last one allowed.
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl Throttle {
    pub const fn new(burst: u32, every: Duration) -> Self {
        Throttle {
            burst,
            every,
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// `Some(suffix)` when this event may be logged: the suffix is empty, or says how many
    /// were suppressed before it. `None` when it must be dropped.
    pub fn allow(&self) -> Option<String> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, count, suppressed) = &mut *st;
        if start.is_none_or(|s| now.duration_since(s) >= self.every) {
            *start = Some(now);
            *count = 0;
        }
        if *count >= self.burst {
            *suppressed += 1;
            return None;
        }
        *count += 1;
        let note = match std::mem::take(suppressed) {
            0 => String::new(),
            n => format!(" ({n} similar lines suppressed before this one)"),
        };
        Some(note)
    }
}

/// Warnings and errors from other crates (pingora logs every failed handshake and broken
/// connection at ERROR): a client opening connections at will must not flood the log.
static OTHERS_LOG: Throttle = Throttle::new(20, Duration::from_secs(10));

/// The most other crates may log.
pub const OTHERS_CEILING: Level = Level::Info;

/// Our defaults when `RUST_LOG` is unset. `pingora_core::connectors` only logs a harmless pool
/// race at ERROR; our own lines report every upstream failure with its reason.
const DEFAULT_FILTER: &str =
    "info,pingora_core=warn,pingora_proxy=warn,pingora=warn,pingora_core::connectors=off";

struct Capped(env_logger::Logger);

/// Whether a record from `target` at `level` may be written at all.
pub fn allowed(target: &str, level: Level) -> bool {
    is_ours(target) || level <= OTHERS_CEILING
}

fn is_ours(target: &str) -> bool {
    target == "proxypilot" || target.starts_with("proxypilot::")
}

impl Log for Capped {
    fn enabled(&self, m: &Metadata) -> bool {
        allowed(m.target(), m.level()) && self.0.enabled(m)
    }

    fn log(&self, r: &Record) {
        if !allowed(r.target(), r.level()) || !self.0.matches(r) {
            return;
        }
        if is_ours(r.target()) || r.level() > Level::Warn {
            return self.0.log(r);
        }
        match OTHERS_LOG.allow() {
            None => {}
            Some(note) if note.is_empty() => self.0.log(r),
            Some(note) => {
                self.0.log(r);
                self.0.log(
                    &Record::builder()
                        .args(format_args!("{}", note.trim()))
                        .level(Level::Warn)
                        .target("proxypilot::logging")
                        .build(),
                );
            }
        }
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// Install the logger. Called once, first thing in `main`.
pub fn init() {
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_FILTER))
            .format_timestamp_millis()
            .build();
    let max: LevelFilter = logger.filter();
    if log::set_boxed_logger(Box::new(Capped(logger))).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_allows_a_burst_then_counts() {
        let t = Throttle::new(3, Duration::from_secs(3600));
        for _ in 0..3 {
            assert_eq!(t.allow().as_deref(), Some(""));
        }
        for _ in 0..5 {
            assert!(t.allow().is_none());
        }
        let t = Throttle::new(1, Duration::from_millis(1));
        assert!(t.allow().is_some());
        assert!(t.allow().is_none());
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.allow().unwrap().contains("1 similar"));
    }

    #[test]
    fn other_crates_never_below_info() {
        for t in [
            "pingora_core::protocols::http::v1::client",
            "pingora_proxy",
            "h2::codec",
            "proxypilotx",
        ] {
            assert!(!allowed(t, Level::Debug), "{t}");
            assert!(!allowed(t, Level::Trace), "{t}");
            assert!(allowed(t, Level::Info) && allowed(t, Level::Error), "{t}");
        }
        for t in ["proxypilot", "proxypilot::tokenizer"] {
            assert!(allowed(t, Level::Trace), "{t}");
        }
    }
}
