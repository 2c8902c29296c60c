//! Prometheus metrics of the sidecar, served at `https://localhost:PORT/metrics`.
//!
//! Owns: the metric definitions (in the `prometheus` crate's default registry) and their text
//! rendering. Labels are route hosts, status codes and fixed reasons only.
//! Must not: carry a header value, a token or anything a client controls as a label.

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    Encoder, HistogramVec, IntCounter, IntCounterVec, IntGauge, TextEncoder,
};

pub static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "proxypilot_requests_total",
        "Requests answered, by route host and status code",
        &["route", "status"]
    )
    .expect("metric registers once")
});

pub static REQUEST_SECONDS: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "proxypilot_request_duration_seconds",
        "Time from request start to the end of the response, by route host",
        &["route"],
        vec![0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0]
    )
    .expect("metric registers once")
});

pub static HANDSHAKES_REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "proxypilot_tls_handshakes_refused_total",
        "TLS handshakes refused, by reason (no_sni, unknown_sni, mint_failed)",
        &["reason"]
    )
    .expect("metric registers once")
});

pub static POLICY_REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "proxypilot_policy_refused_total",
        "Requests refused by a route's method/path policy, by route host and rule (the rule's \
         text from the configuration, no_allow_rule or bad_path)",
        &["route", "rule"]
    )
    .expect("metric registers once")
});

pub static CERTS_MINTED: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "proxypilot_certificates_minted_total",
        "Leaf certificates minted since start"
    )
    .expect("metric registers once")
});

pub static MISDIRECTED: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "proxypilot_misdirected_requests_total",
        "Requests refused with 421 because Host or :authority differed from the TLS server name"
    )
    .expect("metric registers once")
});

pub static SPARES_USED: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "proxypilot_tokenizer_spares_used_total",
        "Requests that started on a pre-connected spare connection to the tokenizer"
    )
    .expect("metric registers once")
});

pub static OPEN_CONNECTIONS: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "proxypilot_client_connections",
        "Client connections open now (admitted under max_connections)"
    )
    .expect("metric registers once")
});

pub static CONNECTIONS_REFUSED: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "proxypilot_client_connections_refused_total",
        "Client connections answered 503 because max_connections were open"
    )
    .expect("metric registers once")
});

pub static CLIENT_TIMEOUTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "proxypilot_client_timeouts_total",
        "Client connections closed by a deadline, by kind (header: slow request header, idle)",
        &["kind"]
    )
    .expect("metric registers once")
});

pub static CONNECTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "proxypilot_connect_total",
        "Requests on the proxy (CONNECT) listener, by outcome: intercepted, passthrough, or why \
         it was refused (auth, unrouted, ip, port, plain_http, busy, bad_request, ...)",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Render every registered metric in the Prometheus text format.
pub fn render() -> String {
    // Touch the metrics so they appear (at zero) before their first event.
    Lazy::force(&REQUESTS);
    Lazy::force(&REQUEST_SECONDS);
    Lazy::force(&HANDSHAKES_REFUSED);
    Lazy::force(&CERTS_MINTED);
    Lazy::force(&MISDIRECTED);
    Lazy::force(&SPARES_USED);
    Lazy::force(&OPEN_CONNECTIONS);
    Lazy::force(&CONNECTIONS_REFUSED);
    Lazy::force(&CLIENT_TIMEOUTS);
    Lazy::force(&CONNECTS);
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&prometheus::gather(), &mut out)
        .expect("text encoding cannot fail");
    String::from_utf8(out).expect("prometheus text is utf-8")
}
