"""Faults on both sides of the sidecar, and the limits that keep one client from holding it.

Tokenizer faults (down, slow to connect, hanging after accept, reset, garbage) are injected by a
stand-in in the tokenizer's place: the client gets a 502 or 504 with a short reason within the
configured timeouts, other clients are served meanwhile, the sidecar recovers by itself, and a
request that may have reached the API is never sent twice. Client faults (disconnects mid-upload
and mid-stream, slowloris headers, idle connections, too many connections) must cost the sidecar
nothing lasting.
"""

import socket
import ssl
import struct
import threading
import time

import pytest

from stack import fd_count, read_response, run, start_sidecar
from standin import Blackhole, Standin

READ_TIMEOUT = 2     # the sidecar's read_timeout (seconds) in these tests
CONNECT_TIMEOUT = 1  # its tokenizer.connect_timeout
HEADER_TIMEOUT = 2   # client_header_timeout
IDLE_TIMEOUT = 3     # client_idle_timeout


@pytest.fixture(scope="module")
def standin():
    s = Standin(only_path="/fault").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def fsidecar(bin_path, workdir, tokenizer, standin):
    s = start_sidecar(
        bin_path, workdir, tokenizer, name="sidecar-faults", tokenizer_url=standin.url,
        section_extra=(f"  read_timeout: {READ_TIMEOUT}s\n"
                       f"  client_header_timeout: {HEADER_TIMEOUT}s\n"
                       f"  client_idle_timeout: {IDLE_TIMEOUT}s\n"),
        tokenizer_extra=f"    connect_timeout: {CONNECT_TIMEOUT}s\n")
    yield s
    s.proc.stop()


def timed_curl(sidecar, path, extra=()):
    t0 = time.time()
    code, _, body, r = sidecar.curl(path, extra=["--max-time", "15", *extra], check=False)
    return code, body, time.time() - t0, r


def assert_recovers(sidecar, standin):
    standin.mode = "ok"
    code, _, body, _ = sidecar.curl("/fault/after", check=False)
    assert code == 200, body


def test_tokenizer_hanging_after_accept_is_504_within_read_timeout(fsidecar, standin):
    standin.mode = "hang"
    code, body, took, _ = timed_curl(fsidecar, "/fault/hang")
    assert code == 504, body
    assert "tokenizer" in body and "timed out" in body, body
    assert READ_TIMEOUT - 0.5 <= took <= READ_TIMEOUT + 3, took
    assert_recovers(fsidecar, standin)


def test_others_are_served_while_one_request_hangs(fsidecar, standin):
    standin.mode = "hang"
    result = {}
    t = threading.Thread(target=lambda: result.update(hung=timed_curl(fsidecar, "/fault/slow")))
    t.start()
    time.sleep(0.3)
    t0 = time.time()
    for i in range(5):
        code, _, body, _ = fsidecar.curl(f"/other/{i}")
        assert code == 200, body
    assert time.time() - t0 < READ_TIMEOUT, "the other requests waited for the hung one"
    t.join()
    assert result["hung"][0] == 504
    assert_recovers(fsidecar, standin)


@pytest.mark.parametrize("mode,why", [("reset_before", "connection reset"),
                                      ("garbage", "invalid")])
def test_tokenizer_reset_or_garbage_is_502_with_reason(fsidecar, standin, mode, why):
    standin.mode = mode
    code, body, took, _ = timed_curl(fsidecar, f"/fault/{mode}")
    assert code == 502, (mode, body)
    assert body.startswith("tokenizer http://127.0.0.1:"), body
    assert why in body.lower() and took < 5, (body, took)
    assert_recovers(fsidecar, standin)


def test_tokenizer_reset_mid_response_ends_the_client_response_early(fsidecar, standin):
    """Headers already went out: the client sees a truncated response, never a hang, and the
    sidecar serves the next request."""
    standin.mode = "reset"
    code, body, took, r = timed_curl(fsidecar, "/fault/reset", extra=["--http1.1"])
    assert r.returncode in (18, 56, 92), (r.returncode, r.stderr)  # partial / recv failure
    assert took < 5
    code, body, took, r = timed_curl(fsidecar, "/fault/reset", extra=["--http2"])
    assert r.returncode in (18, 56, 92), (r.returncode, r.stderr)
    assert_recovers(fsidecar, standin)


def test_a_post_that_may_have_reached_the_api_is_never_sent_twice(fsidecar, standin):
    standin.mode = "ok"
    code, _, body, _ = fsidecar.curl("/warm")  # leaves a pooled connection to the stand-in
    assert code == 200, body
    standin.clear()
    standin.mode = "reset_before"
    code, body, _, _ = timed_curl(fsidecar, "/fault/charge", extra=["-d", '{"amount": 42}'])
    assert code == 502, body
    time.sleep(0.5)
    posts = [r for r in standin.requests() if r.method == "POST"]
    assert len(posts) == 1, posts
    assert_recovers(fsidecar, standin)


def close_wait_to(port):
    """Local TCP sockets in CLOSE_WAIT (the peer closed, this end not yet) whose peer is on
    `port`: the sidecar's ends of tokenizer connections the tokenizer closed."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "08" and int(f[2].rsplit(":", 1)[1], 16) == port:
                found.append(f[1])
    return found


def test_a_pooled_connection_the_tokenizer_closed_is_not_reused(fsidecar, standin):
    """A POST is not retried on a connection that turns out closed, so the sidecar must see the
    tokenizer's close before it picks a pooled connection, also one put back a moment ago."""
    standin.mode = "ok"
    code, _, body, _ = fsidecar.curl("/pool/warm")
    assert code == 200, body
    assert standin.close_open() >= 1
    standin.clear()
    time.sleep(0.2)
    code, _, body, _ = fsidecar.curl("/pool/post", extra=["-d", '{"n": 1}'])
    assert code == 200, body
    assert [r.method for r in standin.requests()] == ["POST"]
    assert standin.accepted == 1  # a new connection


def test_bytes_the_tokenizer_sends_on_an_idle_pooled_connection_answer_no_request(
        fsidecar, standin):
    """A whole response sent on an idle pooled connection must not become the answer to the
    next request put on it: the connection is not reused."""
    standin.mode = "ok"
    code, _, body, _ = fsidecar.curl("/pool/before-stray")
    assert code == 200, body
    smuggled = b'{"smuggled": true}'
    assert standin.send_on_open(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)) >= 1
    standin.clear()
    time.sleep(0.2)
    code, _, body, _ = fsidecar.curl("/pool/after-stray")
    assert code == 200, body
    assert "smuggled" not in body and "after-stray" in body, body
    targets = [r.target for r in standin.requests()]
    assert len(targets) == 1 and targets[0].endswith("/pool/after-stray"), targets
    assert standin.accepted == 1  # a new connection


def test_a_pooled_connection_the_tokenizer_closed_is_closed_by_the_sidecar(fsidecar, standin):
    """Closed by the tokenizer while idle in the pool, the sidecar's end is closed too within
    seconds, not left half-open until some later request finds it."""
    standin.mode = "ok"
    standin.clear()
    for i in range(3):
        code, _, body, _ = fsidecar.curl(f"/pool/idle/{i}")
        assert code == 200, body
    assert standin.close_open() >= 1
    deadline = time.time() + 6
    while close_wait_to(standin.port) and time.time() < deadline:
        time.sleep(0.1)
    assert not close_wait_to(standin.port)


def test_tokenizer_slow_to_connect_is_504_within_connect_timeout(bin_path, workdir, tokenizer):
    hole = Blackhole()
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-blackhole",
                      tokenizer_url=hole.url,
                      tokenizer_extra=f"    connect_timeout: {CONNECT_TIMEOUT}s\n")
    try:
        code, body, took, _ = timed_curl(s, "/user")
        assert code == 504, body
        assert "connect timed out" in body, body
        assert took < CONNECT_TIMEOUT * 2 + 3, took
    finally:
        s.proc.stop()
        hole.close()


# ---------- client faults ----------

def _wait_ended(conns, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(c.ended.is_set() for c in conns):
            return True
        time.sleep(0.05)
    return False


def test_client_gone_mid_upload_closes_the_tokenizer_connection(fsidecar, standin):
    standin.mode = "ok"
    standin.clear()
    before = fd_count(fsidecar.pid())
    for _ in range(5):
        s = fsidecar.tls_socket()
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: api.github.com\r\nContent-Length: 1000000\r\n"
                  b"\r\n" + b"x" * 100_000)
        time.sleep(0.1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    time.sleep(0.5)
    partial = [c for c in standin.conns if c.raw and not c.requests]
    assert partial, "the uploads never reached the tokenizer"
    # No half-sent request is left on a connection that could be reused: each is closed.
    assert _wait_ended(partial, 5), [len(c.raw) for c in partial]
    code, _, body, _ = fsidecar.curl("/after-upload")
    assert code == 200, body
    time.sleep(0.5)
    assert fd_count(fsidecar.pid()) <= before + 4


def test_client_gone_mid_stream_closes_the_tokenizer_connection(fsidecar, standin):
    standin.mode = "sse"
    standin.clear()
    s = fsidecar.tls_socket()
    s.sendall(b"GET /fault/events HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(4096)
    s.close()
    streams = [c for c in standin.conns if c.requests and "/events" in c.requests[-1].target]
    assert streams
    assert _wait_ended(streams, 5), "the tokenizer kept streaming to a client that left"
    assert_recovers(fsidecar, standin)


def _closed_after(sock, drip=None, limit=12.0):
    """Seconds until the server closes `sock` (recv gives b'' or an error); with `drip`,
    send one byte of it every 0.5 s meanwhile. None if still open after `limit`."""
    t0 = time.time()
    sock.settimeout(0.5)
    i = 0
    while time.time() - t0 < limit:
        try:
            if drip is not None and i < len(drip):
                sock.send(drip[i:i + 1])
                i += 1
            data = sock.recv(4096)
            if not data:
                return time.time() - t0
        except socket.timeout:
            continue
        except (ssl.SSLError, OSError):
            return time.time() - t0
    return None


def test_slowloris_header_is_cut_after_the_header_timeout(fsidecar, standin):
    standin.clear()
    s = fsidecar.tls_socket()
    # Never finishes: one byte every 0.5 s, far inside any per-read timeout.
    drip = b"GET /slow HTTP/1.1\r\nHost: api.github.com\r\nX-Slow: " + b"a" * 200
    took = _closed_after(s, drip)
    s.close()
    assert took is not None, "a header trickling in was never cut"
    assert HEADER_TIMEOUT - 0.5 <= took <= HEADER_TIMEOUT + 2, took
    assert standin.requests() == []


def test_idle_connections_are_cut_before_and_between_requests(fsidecar):
    s = fsidecar.tls_socket()
    took = _closed_after(s)
    assert took is not None and IDLE_TIMEOUT - 0.5 <= took <= IDLE_TIMEOUT + 2, took
    s.close()
    s = fsidecar.tls_socket()
    s.sendall(b"GET /one HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
    status, _, _ = read_response(s)
    assert status == 200
    took = _closed_after(s)
    assert took is not None and IDLE_TIMEOUT - 0.5 <= took <= IDLE_TIMEOUT + 2, took
    s.close()


def test_a_slow_body_is_not_cut_by_the_header_timeout(fsidecar, standin):
    """Only the header has a deadline: a body that takes longer still arrives whole."""
    standin.mode = "ok"
    standin.clear()
    s = fsidecar.tls_socket()
    s.sendall(b"POST /slow-body HTTP/1.1\r\nHost: api.github.com\r\nContent-Length: 8\r\n\r\n")
    for b in b"12345678":
        time.sleep(0.45)  # 3.6 s in all: past the header timeout, each gap under the idle one
        s.send(bytes([b]))
    status, _, body = read_response(s)
    s.close()
    assert status == 200, body
    (req,) = standin.wait_requests(1)
    assert req.body == b"12345678"


def test_idle_http2_connection_is_closed(fsidecar):
    s = fsidecar.tls_socket(alpn=("h2",))
    assert s.selected_alpn_protocol() == "h2"
    # Client preface and an empty SETTINGS frame, then nothing.
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    took = _closed_after(s)
    s.close()
    assert took is not None and took <= IDLE_TIMEOUT + 3, took


def test_connection_cap_refuses_cleanly_and_frees_slots(bin_path, workdir, tokenizer, upstream):
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-cap",
                      section_extra="  max_connections: 3\n")
    held = []
    try:
        for i in range(3):
            c = s.tls_socket()
            c.sendall(b"GET /held HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
            assert read_response(c)[0] == 200
            held.append(c)
        extra = s.tls_socket()
        extra.sendall(b"GET /one-too-many HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
        status, headers, body = read_response(extra)
        assert status == 503, body
        assert b"max_connections 3" in body and headers.get("connection") == "close"
        extra.close()
        held.pop().close()
        time.sleep(0.3)
        again = s.tls_socket()
        again.sendall(b"GET /freed HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
        assert read_response(again)[0] == 200
        held.append(again)
        for c in held:
            c.close()
        held = []
        time.sleep(0.3)
        m = run(["curl", "-sS", *s.resolve_args("localhost"),
                 f"https://localhost:{s.port}/metrics"]).stdout
        refused = [l for l in m.splitlines()
                   if l.startswith("proxypilot_client_connections_refused_total ")]
        assert refused and int(float(refused[0].split()[1])) >= 1, m
    finally:
        for c in held:
            c.close()
        s.proc.stop()


@pytest.mark.parametrize("proto", ["--http1.1", "--http2"])
def test_tokenizer_stalling_mid_stream_truncates_the_response(fsidecar, standin, proto):
    """Two events, then the tokenizer goes quiet past read_timeout: the client must see a broken
    response, not a complete 200 with an error message appended to the events."""
    standin.mode = "sse_stall"
    code, body, took, r = timed_curl(fsidecar, "/fault/stall", extra=[proto, "-N"])
    assert code == 200 and "data: 1" in body, body
    assert r.returncode != 0, "a truncated stream ended as if complete"
    assert "timed out" not in body and "tokenizer" not in body, body
    assert took < READ_TIMEOUT + 3
    assert_recovers(fsidecar, standin)
