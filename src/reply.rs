//! Local answers: the one way both proxies write a response they make themselves.
//!
//! Owns: turning a pingora error into a status and a short plain-text reason (the single error
//! path of `fail_to_proxy`), and writing small local bodies (errors, the CA certificate,
//! health, metrics).
//! Must not: put a header value, a sealed secret or a token into a reason.

use bytes::Bytes;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, Session};

/// The whole request body before anything is forwarded (at most `limit` bytes, else 413
/// "request body too large {why}"). Retry buffering keeps the bytes for pingora to send on
/// afterwards.
pub async fn read_whole_body(session: &mut Session, limit: usize, why: &str) -> Result<Vec<u8>> {
    session.enable_retry_buffering();
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return refuse(
                413,
                format!("request body too large {why} (limit {} KiB)", limit / 1024),
            );
        }
    }
    Ok(body)
}

/// Refuse a request with `status` and a reason the client may read.
pub fn refuse<T>(status: u16, reason: impl Into<String>) -> Result<T> {
    Err(Error::explain(ErrorType::HTTPStatus(status), reason.into()))
}

/// The status and reason for any error that ends a request; `what` names the upstream.
pub fn status_and_reason(e: &Error, what: &str) -> (u16, String) {
    let context = e.context.as_ref().map(|c| c.as_str().to_string());
    match e.etype() {
        ErrorType::HTTPStatus(code) => (*code, context.unwrap_or_default()),
        etype => match e.esource() {
            ErrorSource::Upstream => {
                let why = match etype {
                    ErrorType::ConnectTimedout => "connect timed out",
                    ErrorType::TLSHandshakeTimedout => "TLS handshake timed out",
                    ErrorType::ConnectRefused => "connection refused",
                    ErrorType::ConnectNoRoute => "no route",
                    ErrorType::TLSHandshakeFailure | ErrorType::HandshakeError => {
                        "TLS handshake failed"
                    }
                    ErrorType::InvalidCert => "invalid certificate",
                    ErrorType::ReadTimedout => "read timed out",
                    ErrorType::WriteTimedout => "write timed out",
                    ErrorType::ConnectionClosed => "connection closed",
                    ErrorType::ReadError => "read failed",
                    ErrorType::WriteError => "write failed",
                    ErrorType::InvalidHTTPHeader => "invalid HTTP response",
                    _ => etype.as_str(),
                };
                let root = e.root_cause().to_string();
                let detail = if root.is_empty() || root == why || root.contains(etype.as_str()) {
                    String::new()
                } else {
                    format!(" ({root})")
                };
                // A gateway that waited too long says so (504); every other failure is 502.
                let code = match etype {
                    ErrorType::ConnectTimedout
                    | ErrorType::TLSHandshakeTimedout
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout => 504,
                    _ => 502,
                };
                (code, format!("{what}: {why}{detail}"))
            }
            ErrorSource::Downstream => match etype {
                ErrorType::H2Error => (0, "client reset the stream".into()),
                ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::ConnectionClosed
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout => (0, "client went away".into()),
                _ => (400, format!("bad request: {}", etype.as_str())),
            },
            _ => (500, format!("internal error: {}", etype.as_str())),
        },
    }
}

/// An empty chunk that ends a request body becomes "no chunk". Pingora writes every chunk it is
/// given to a chunked HTTP/1 upstream, and an empty one is `0\r\n\r\n`: the terminator, which
/// pingora then writes again when the body ends. The second one would sit on a pooled
/// connection and be read as the start of the next request. (Empty chunks mid-body are skipped
/// by pingora itself; `None` mid-body would end the body, so those are left alone.)
pub fn no_empty_last_chunk(body: &mut Option<Bytes>, end_of_stream: bool) {
    if end_of_stream && body.as_ref().is_some_and(|b| b.is_empty()) {
        *body = None;
    }
}

/// The one error path of both proxies' `fail_to_proxy`: the status and short reason for `e`
/// (`what` names the upstream), written to the client unless a response already began. The
/// connection is not reused after an error, so the answer says `Connection: close`; a pooled
/// client (the sidecar, in front of the tokenizer) then never keeps a connection that is about
/// to close. Returns pingora's answer and the reason for the request's log line.
pub async fn fail(session: &mut Session, e: &Error, what: &str) -> (FailToProxy, String) {
    session.set_keepalive(None);
    let (code, reason) = status_and_reason(e, what);
    if code > 0 {
        send_error(session, code, &reason).await;
    }
    let answer = FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    };
    (answer, reason)
}

/// RFC 9110 §8.6: no Content-Length (nor a body) on 1xx and 204 answers, whatever the upstream
/// sent; HTTP/2 clients treat one as a protocol error.
pub fn drop_length_where_forbidden(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::NO_CONTENT || resp.status.is_informational() {
        resp.remove_header(&http::header::CONTENT_LENGTH);
        resp.remove_header(&http::header::TRANSFER_ENCODING);
    }
}

/// Write a small complete response. `extra` headers are added as given.
pub async fn send(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&str, &str)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header("Content-Type", content_type)?;
    resp.insert_header("Content-Length", body.len().to_string())?;
    resp.insert_header("Cache-Control", "no-store")?;
    for (k, v) in extra {
        resp.insert_header(k.to_string(), *v)?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only || body.is_empty())
        .await?;
    if !head_only && !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Write a plain-text error: `reason` plus a newline. Nothing is written when a response has
/// already begun (the upstream failed mid-body): appending the reason would turn a truncated
/// body into a complete-looking one; the caller drops the connection instead, so the client
/// sees the truncation.
pub async fn send_error(session: &mut Session, status: u16, reason: &str) {
    if session.response_written().is_some() {
        return;
    }
    let body = Bytes::from(format!("{reason}\n"));
    if let Err(e) = send(session, status, "text/plain; charset=utf-8", body, &[]).await {
        log::debug!("could not send the {status} answer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(etype: ErrorType) -> Box<Error> {
        Error::new_up(etype)
    }

    #[test]
    #[rustfmt::skip] // a table reads best as one row a line
    fn every_error_maps_to_one_status_and_a_short_reason() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "Connection reset by peer");
        let cases: Vec<(Box<Error>, u16, &str)> = vec![
            (Error::explain(ErrorType::HTTPStatus(421), "Misdirected Request: x"), 421, "Misdirected Request: x"),
            (Error::explain(ErrorType::HTTPStatus(400), "bad host"), 400, "bad host"),
            (up(ErrorType::ConnectRefused), 502, "T: connection refused"),
            (up(ErrorType::ConnectNoRoute), 502, "T: no route"),
            (up(ErrorType::TLSHandshakeFailure), 502, "T: TLS handshake failed"),
            (up(ErrorType::InvalidCert), 502, "T: invalid certificate"),
            (up(ErrorType::ConnectionClosed), 502, "T: connection closed"),
            (up(ErrorType::InvalidHTTPHeader), 502, "T: invalid HTTP response"),
            (up(ErrorType::ConnectTimedout), 504, "T: connect timed out"),
            (up(ErrorType::TLSHandshakeTimedout), 504, "T: TLS handshake timed out"),
            (up(ErrorType::ReadTimedout), 504, "T: read timed out"),
            (up(ErrorType::WriteTimedout), 504, "T: write timed out"),
            (Error::because(ErrorType::ReadError, "reading", reset).into_up(), 502, "T: read failed (Connection reset by peer)"),
            (Error::new_down(ErrorType::H2Error), 0, "client reset the stream"),
            (Error::new_down(ErrorType::ReadError), 0, "client went away"),
            (Error::new_down(ErrorType::ConnectionClosed), 0, "client went away"),
            (Error::new_down(ErrorType::InvalidHTTPHeader), 400, "bad request: InvalidHTTPHeader"),
            (Error::new(ErrorType::InternalError), 500, "internal error: InternalError"),
        ];
        for (e, code, reason) in cases {
            assert_eq!(status_and_reason(&e, "T"), (code, reason.to_string()), "{e}");
        }
    }

    #[test]
    fn only_an_empty_final_chunk_is_dropped() {
        let mut b = Some(Bytes::new());
        no_empty_last_chunk(&mut b, false);
        assert_eq!(b, Some(Bytes::new()), "mid-body: None would end the body");
        no_empty_last_chunk(&mut b, true);
        assert_eq!(b, None);
        let mut b = Some(Bytes::from_static(b"x"));
        no_empty_last_chunk(&mut b, true);
        assert_eq!(b.as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn no_length_on_204_and_1xx() {
        for (status, kept) in [(204, false), (100, false), (200, true), (304, true)] {
            let mut r = ResponseHeader::build(status, None).unwrap();
            r.insert_header("Content-Length", "5").unwrap();
            drop_length_where_forbidden(&mut r);
            assert_eq!(r.headers.contains_key("content-length"), kept, "{status}");
        }
    }
}
