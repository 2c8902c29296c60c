"""Hostile HTTP and TLS input: the sidecar refuses it precisely, forwards nothing it should not,
never hangs, and keeps serving.

Every hostile input is written byte for byte on a raw socket (`socket` + `ssl`), or with the `h2`
package for HTTP/2. Each test checks (a) the answer (status and short reason, a close, or a
refused handshake), (b) what reached the upstream (nothing, unless the case must pass through)
and (c) that the sidecar is alive and still serves a routed request afterwards.

"Reached the upstream" is checked twice: in the upstream's own log, and in the tokenizer's log
(one line per request it handled), because the upstream logs only requests it parsed and
answers some (a 100 KB header, an unknown method) with an error it does not log.
"""

import collections
import concurrent.futures
import random
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from stack import DUMMY, REAL, headers_of, start_sidecar, start_tokenizer

GH = "api.github.com"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: api.github.com\r\n\r\n"
SETTLE = 0.3  # how long to let a (wrongly) forwarded request reach the upstream


class Unsafe(AssertionError):
    """The sidecar did something unsafe (as opposed to a hang, a crash or an unexpected answer,
    which fail as plain assertions)."""


def expect_safe(ok, what):
    if not ok:
        raise Unsafe(what)


# --- raw HTTP/1.1 over TLS ----------------------------------------------------------------------


def tls_context(ca, alpn=("http/1.1",)):
    ctx = ssl.create_default_context(cafile=str(ca))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def tls_connect(sidecar, alpn=("http/1.1",), sni=GH, timeout=5.0):
    sock = socket.create_connection(("127.0.0.1", sidecar.port), timeout=timeout)
    try:
        return tls_context(sidecar.ca, alpn).wrap_socket(sock, server_hostname=sni)
    except BaseException:
        sock.close()
        raise


Response = collections.namedtuple("Response", "status reason headers body")


class Exchange:
    """What came back on one connection: the parsed responses, whether it was closed, and how
    long it took. `hung` is true when the total timeout passed with no answer and no close."""

    def __init__(self, raw, closed, hung, elapsed, send_error):
        self.raw = raw
        self.closed = closed
        self.hung = hung
        self.elapsed = elapsed
        self.send_error = send_error
        self.responses = parse_responses(raw)

    @property
    def first(self):
        assert self.responses, f"no response (closed={self.closed}, raw={self.raw[:300]!r})"
        return self.responses[0]

    def __repr__(self):
        return (f"Exchange(closed={self.closed}, hung={self.hung}, elapsed={self.elapsed:.2f}, "
                f"send_error={self.send_error!r}, raw={self.raw[:400]!r})")


def parse_responses(raw):
    """HTTP/1.1 responses in `raw`, in order (a trailing incomplete one is dropped)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            break
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers.setdefault(k.strip().lower().decode("latin1"), []).append(
                v.strip().decode("latin1"))
        status = int(parts[1])
        if "transfer-encoding" in headers:
            body = b""
            while True:
                size_line, sep, rest = rest.partition(b"\r\n")
                if not sep:
                    return out
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    rest = rest.partition(b"\r\n")[2]
                    break
                body += rest[:size]
                rest = rest[size + 2:]
        elif "content-length" in headers:
            n = int(headers["content-length"][0])
            if len(rest) < n:
                return out
            body, rest = rest[:n], rest[n:]
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body, rest = rest, b""
        out.append(Response(status, parts[2].decode("latin1") if len(parts) > 2 else "",
                            headers, body))
        raw = rest
    return out


def exchange(sidecar, data, timeout=4.0, linger=0.4, sni=GH):
    """Send `data` in one write on a fresh TLS connection (ALPN http/1.1) and collect what comes
    back: until the peer closes, or `linger` seconds of silence after a complete response, or
    `timeout` in all (then `hung`)."""
    t0 = time.time()
    tls = tls_connect(sidecar, sni=sni, timeout=timeout)
    raw, closed, send_error = b"", False, None
    try:
        try:
            tls.sendall(data)
        except (ssl.SSLError, OSError) as e:  # the peer may close while we still write
            send_error = e
        deadline = t0 + timeout
        while True:
            now = time.time()
            if now >= deadline:
                break
            wait = deadline - now
            if parse_responses(raw):
                wait = min(wait, linger)
            tls.settimeout(max(wait, 0.01))
            try:
                chunk = tls.recv(65536)
            except (socket.timeout, TimeoutError):
                if parse_responses(raw):
                    break
                continue
            except (ssl.SSLError, OSError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            raw += chunk
    finally:
        tls.close()
    elapsed = time.time() - t0
    hung = not closed and not parse_responses(raw)
    return Exchange(raw, closed, hung, elapsed, send_error)


# --- what reached the tokenizer and the upstream ---------------------------------------------

TOKENIZER_LINE = re.compile(r"proxypilot::tokenizer\] (\S+) (\S+) (\S+) status=")


def tokenizer_requests(tokenizer):
    """(method, host, path) of every request the tokenizer logged."""
    return TOKENIZER_LINE.findall(tokenizer.proc.output())


class Watch:
    """Marks the upstream's and the tokenizer's logs; reports what arrived since."""

    def __init__(self, upstream, tokenizer):
        self.upstream, self.tokenizer = upstream, tokenizer
        self.u = upstream.mark()
        self.t = len(tokenizer_requests(tokenizer))

    def at_upstream(self, settle=SETTLE):
        time.sleep(settle)
        return self.upstream.since(self.u)

    def at_tokenizer(self):
        return tokenizer_requests(self.tokenizer)[self.t:]

    def assert_nothing_forwarded(self, tokenizer_too=True):
        got = self.at_upstream()
        expect_safe(got == [],
                    f"reached the upstream: {[(e['method'], e['path']) for e in got]}")
        if tokenizer_too:
            expect_safe(self.at_tokenizer() == [],
                        f"reached the tokenizer: {self.at_tokenizer()}")

    def assert_not_smuggled(self, path="/smuggled"):
        time.sleep(SETTLE)
        up = [e["path"] for e in self.upstream.since(self.u) if e["path"].startswith(path)]
        tok = [t for t in self.at_tokenizer() if t[2].startswith(path)]
        expect_safe(up == [] and tok == [], f"smuggled request forwarded: {up} {tok}")


def assert_still_serves(sidecar, upstream):
    """The process is alive and a routed request goes through with the real credential."""
    assert sidecar.proc.poll() is None, sidecar.proc.output()[-3000:]
    m = upstream.mark()
    code, _, body, _ = sidecar.curl(
        "/still-serving", extra=["--http1.1", "-H", f"Authorization: Bearer {DUMMY}"])
    assert code == 200, body
    e = upstream.wait_since(m)[0]
    assert e["path"] == "/still-serving"
    assert headers_of(e)["authorization"] == [f"Bearer {REAL[GH]}"]


def assert_refused_400_and_closed(x):
    """The safe outcome for a request that cannot be framed or parsed: 400, then close, and no
    second response (nothing pipelined after it was read as a request)."""
    assert not x.hung, x
    expect_safe(x.first.status == 400, f"not a 400: {x}")
    expect_safe(x.closed, f"connection left open after a 400 on unparseable input: {x}")
    expect_safe(len(x.responses) == 1, f"a second response after the 400: {x}")


# --- 1. conflicting framing and request smuggling ---------------------------------------------

POST = b"POST /framing HTTP/1.1\r\nHost: api.github.com\r\n"

REFUSED_FRAMING = {
    "two-content-lengths": POST + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
    "content-length-list": POST + b"Content-Length: 4, 5\r\n\r\nabcd",
    "te-chunked-identity": POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-xchunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(REFUSED_FRAMING))
def test_conflicting_framing_is_400_and_nothing_is_smuggled(name, sidecar, upstream, tokenizer):
    w = Watch(upstream, tokenizer)
    x = exchange(sidecar, REFUSED_FRAMING[name] + SMUGGLED)
    assert_refused_400_and_closed(x)
    w.assert_nothing_forwarded()
    w.assert_not_smuggled()
    assert_still_serves(sidecar, upstream)


@pytest.mark.parametrize("size", [b"zz", b"-1", b"0x3", b"+3", b"3 x", b"fffffffffffffffff1"])
def test_invalid_chunk_size_is_400_and_nothing_is_smuggled(size, sidecar, upstream, tokenizer):
    w = Watch(upstream, tokenizer)
    x = exchange(sidecar, POST + b"Transfer-Encoding: chunked\r\n\r\n" + size
                 + b"\r\nabc\r\n0\r\n\r\n" + SMUGGLED)
    assert_refused_400_and_closed(x)
    assert b"InvalidChunk" in x.first.body or b"chunk" in x.first.body.lower(), x
    # The header went ahead to the tokenizer (bodies stream); the request never completed.
    w.assert_nothing_forwarded(tokenizer_too=False)
    w.assert_not_smuggled()
    assert_still_serves(sidecar, upstream)


CL_TE = {
    # The brief's shape: under TE the body ends at "0", /smuggled is pipelined after it.
    "cl-then-te": POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "te-then-cl": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    # The other desync: under TE /smuggled is body; a CL reader would see it as a request.
    "cl0-te-body-holds-request": POST
    + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
}


@pytest.mark.parametrize("name", sorted(CL_TE))
def test_content_length_with_chunked_never_desyncs(name, sidecar, upstream, tokenizer):
    """Content-Length together with Transfer-Encoding: chunked. RFC 9112 §6.3 allows two safe
    outcomes and this test accepts exactly those: refuse (400, close, nothing forwarded), or
    frame by Transfer-Encoding, forward without the Content-Length, and close the connection
    after the answer, so nothing the client pipelined after it is ever read as a request."""
    w = Watch(upstream, tokenizer)
    x = exchange(sidecar, CL_TE[name])
    assert not x.hung, x
    if x.first.status == 400:
        assert_refused_400_and_closed(x)
        w.assert_nothing_forwarded()
    else:
        # What pingora does today: TE wins, CL dropped, one request, then close.
        assert x.first.status == 200, x
        assert x.closed and len(x.responses) == 1, x
        got = w.at_upstream()
        assert [(e["method"], e["path"]) for e in got] == [("POST", "/framing")], got
        h = headers_of(got[0])
        assert "content-length" not in h, h
        if name == "cl0-te-body-holds-request":
            assert got[0]["body_len"] == len(SMUGGLED)
            assert got[0]["body_head"] == SMUGGLED.decode()
        else:
            assert got[0]["body_len"] == 0
    w.assert_not_smuggled()
    assert_still_serves(sidecar, upstream)


# --- 2. CR, LF, NUL and obs-fold in header values --------------------------------------------

GET = b"GET /hdr HTTP/1.1\r\nHost: api.github.com\r\n"

BAD_HEADER_BYTES = {
    "bare-cr": GET + b"X-A: foo\rX-Injected: 1\r\n\r\n",
    "bare-cr-in-host": b"GET /hdr HTTP/1.1\r\nHost: api.github.com\rX-Injected: 1\r\n\r\n",
    "bare-lf-mid-value": GET + b"X-A: fo\no\r\n\r\n",
    "nul": GET + b"X-A: foo\x00bar\r\n\r\n",
    "obs-fold-space": GET + b"X-A: foo\r\n bar\r\n\r\n",
    "obs-fold-tab": GET + b"X-A: foo\r\n\tbar\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_HEADER_BYTES))
def test_control_bytes_in_headers_are_400(name, sidecar, upstream, tokenizer):
    w = Watch(upstream, tokenizer)
    x = exchange(sidecar, BAD_HEADER_BYTES[name])
    assert_refused_400_and_closed(x)
    w.assert_nothing_forwarded()
    assert_still_serves(sidecar, upstream)


def test_bare_lf_in_a_header_value_is_400(sidecar, upstream, tokenizer):
    w = Watch(upstream, tokenizer)
    x = exchange(sidecar, GET + b"X-A: foo\nX-Injected: 1\r\n\r\n")
    try:
        assert not x.hung, x
        expect_safe(x.first.status == 400, f"not a 400: {x}")
        w.assert_nothing_forwarded()
    finally:
        assert_still_serves(sidecar, upstream)


# --- 3. oversized request heads ---------------------------------------------------------------

OVERSIZED = {
    "request-line-100k": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
    "10000-headers": GET + b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)) + b"\r\n",
    "headers-over-1mib": GET
    + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 8000) for i in range(140)) + b"\r\n",
    "one-header-100k": GET + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", [
    "request-line-100k",
    "10000-headers",
    "headers-over-1mib",
    "one-header-100k",
])
def test_oversized_head_is_refused_without_hanging(name, sidecar, upstream, tokenizer):
    w = Watch(upstream, tokenizer)
    x = exchange(sidecar, OVERSIZED[name], timeout=6.0)
    try:
        assert not x.hung, x
        if x.responses:
            expect_safe(x.first.status in (400, 414, 431), f"not refused: {x}")
            # The answer is the sidecar's, not one the upstream gave to a forwarded request.
            expect_safe("BaseHTTP" not in str(x.first.headers.get("server")),
                        f"the upstream answered: {x}")
        else:
            assert x.closed, x
        w.assert_nothing_forwarded()
    finally:
        assert_still_serves(sidecar, upstream)


# --- 4. absolute-form targets -----------------------------------------------------------------

@pytest.mark.parametrize("target", [
    b"https://evil.example/x",
    b"http://evil.example/",
    b"https://api.github.com@evil.example/x",
    b"https://api.github.com.evil.example/x",
])
def test_absolute_form_naming_another_host_is_refused(target, sidecar, upstream, tokenizer):
    w = Watch(upstream, tokenizer)
    x = exchange(sidecar, b"GET " + target + b" HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
    assert not x.hung, x
    assert x.first.status in (400, 421), x
    if x.first.status == 421:
        assert b"Misdirected" in x.first.body, x
    w.assert_nothing_forwarded()
    assert_still_serves(sidecar, upstream)


def test_absolute_form_without_host_naming_another_host_is_421(sidecar, upstream, tokenizer):
    w = Watch(upstream, tokenizer)
    x = exchange(sidecar, b"GET https://evil.example/x HTTP/1.1\r\n\r\n")
    assert x.first.status == 421, x
    assert b"evil.example" in x.first.body and b"Misdirected" in x.first.body, x
    w.assert_nothing_forwarded()
    assert_still_serves(sidecar, upstream)


@pytest.mark.parametrize("scheme", [b"https", b"http"])
def test_absolute_form_naming_the_routed_host_works(scheme, sidecar, upstream):
    m = upstream.mark()
    x = exchange(sidecar, b"GET " + scheme + b"://api.github.com/abs?q=1 HTTP/1.1\r\n"
                 b"Host: api.github.com\r\nAuthorization: Bearer dummy\r\n\r\n")
    assert x.first.status == 200, x
    got = upstream.wait_since(m)
    assert [e["path"] for e in got] == ["/abs?q=1"]
    h = headers_of(got[0])
    assert h["host"] == [GH] and h["authorization"] == [f"Bearer {REAL[GH]}"]


# --- 5. path tricks pass through untouched (checked on a raw upstream) -----------------------

class RawUpstream:
    """A TLS upstream that records each request head byte for byte and answers 200."""

    def __init__(self, pki):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki / "up.pem"), str(pki / "up.key"))
        ctx.set_alpn_protocols(["http/1.1"])
        self.ctx = ctx
        self.heads = []
        self.lock = threading.Lock()
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            t = self.ctx.wrap_socket(c, server_side=True)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    d = t.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                with self.lock:
                    self.heads.append(head)
                n = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        n = int(v)
                while len(buf) < n:
                    buf += t.recv(65536)
                buf = buf[n:]
                body = b'{"ok": true}'
                t.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            c.close()

    def since(self, mark):
        with self.lock:
            return self.heads[mark:]

    def mark(self):
        with self.lock:
            return len(self.heads)

    def stop(self):
        self.stopped = True
        self.srv.close()


@pytest.fixture(scope="module")
def raw_stack(bin_path, workdir, pki):
    """A raw-recording upstream behind its own tokenizer and sidecar: the shared upstream
    (Python's http.server) folds a leading '//' in paths, which would hide what was sent."""
    up = RawUpstream(pki)
    tok = start_tokenizer(bin_path, workdir, pki, up, name="tokenizer-hostile-raw")
    s = start_sidecar(bin_path, workdir, tok, name="sidecar-hostile-raw")
    yield s, up
    s.proc.stop()
    tok.proc.stop()
    up.stop()


TRICK_PATHS = [
    "/../../etc/passwd",
    "//evil.example/x",
    "/%2e%2e/x",
    "/@evil.example/x",
    "/x?next=http://evil.example/",
    "/%0d%0aX-Injected:%201",
    "/x;a=b",
    "/x%23frag",
]


@pytest.mark.parametrize("path", TRICK_PATHS)
def test_path_tricks_pass_through_untouched_to_the_routed_host(path, raw_stack):
    s, up = raw_stack
    m = up.mark()
    x = exchange(s, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: api.github.com\r\n"
                 b"Authorization: Bearer dummy\r\n\r\n")
    assert x.first.status == 200, x
    deadline = time.time() + 5
    while not up.since(m) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    heads = up.since(m)
    assert len(heads) == 1, heads
    lines = heads[0].split(b"\r\n")
    assert lines[0] == b"GET " + path.encode() + b" HTTP/1.1", lines[0]
    fields = [line.partition(b":") for line in lines[1:]]
    hdrs = collections.defaultdict(list)
    for k, _, v in fields:
        hdrs[k.strip().lower()].append(v.strip())
    assert hdrs[b"host"] == [GH.encode()], lines
    assert hdrs[b"authorization"] == [f"Bearer {REAL[GH]}".encode()], lines
    assert b"x-injected" not in hdrs, lines
    assert s.proc.poll() is None


# --- 6. TLS -----------------------------------------------------------------------------------

def client_hello(ca, sni=GH):
    """A real ClientHello as Python's OpenSSL writes it."""
    ctx = tls_context(ca)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = out.read()
    assert hello[:1] == b"\x16" and len(hello) > 100
    return hello


def raw_tcp_exchange(port, data, timeout=3.0, close_write=False):
    """Send bytes on plain TCP; return (bytes received, how it ended)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got, end = b"", "timeout"
    try:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        while True:
            d = s.recv(4096)
            if not d:
                end = "eof"
                break
            got += d
    except (socket.timeout, TimeoutError):
        end = "timeout"
    except ConnectionResetError:
        end = "reset"
    finally:
        s.close()
    return got, end


GARBAGE = {
    "plain-http": b"GET / HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
    "zeros": b"\x00" * 512,
    "random": random.Random(7).randbytes(2048),
    "handshake-record-of-garbage": b"\x16\x03\x01\x00\x10" + b"garbage-garbage!",
    "oversized-record-length": b"\x16\x03\x01\xff\xff" + b"A" * 64,
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_instead_of_client_hello_is_dropped(name, sidecar, upstream):
    got, end = raw_tcp_exchange(sidecar.port, GARBAGE[name])
    # Closed promptly (EOF or reset), with at most a TLS alert record, never a ServerHello.
    assert end in ("eof", "reset"), (end, got)
    assert got == b"" or got[:1] == b"\x15", got
    assert_still_serves(sidecar, upstream)


def test_truncated_client_hello_then_close(sidecar, upstream):
    hello = client_hello(sidecar.ca)
    got, end = raw_tcp_exchange(sidecar.port, hello[:20], close_write=True)
    assert end in ("eof", "reset"), (end, got)
    assert got[:1] != b"\x16", got  # no ServerHello for a partial ClientHello
    assert_still_serves(sidecar, upstream)


def test_truncated_client_hello_left_open_does_not_block_others(sidecar, upstream):
    hello = client_hello(sidecar.ca)
    stalled = [socket.create_connection(("127.0.0.1", sidecar.port), timeout=2.5)
               for _ in range(20)]
    try:
        for s in stalled:
            s.sendall(hello[:20])
        # While 20 handshakes dangle, a normal client is served at once.
        t0 = time.time()
        assert_still_serves(sidecar, upstream)
        assert time.time() - t0 < 2.0
        # The dangling one got nothing: no ServerHello, no certificate, for half a hello.
        s = stalled[0]
        s.settimeout(2.0)
        try:
            got = s.recv(4096)
        except (socket.timeout, TimeoutError):
            got = b""
        assert got[:1] != b"\x16", got
    finally:
        for s in stalled:
            s.close()
    assert_still_serves(sidecar, upstream)


@pytest.fixture(scope="module")
def short_timeout_sidecar(bin_path, workdir, tokenizer):
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-hostile-timeouts",
                      yaml_extra="  client_idle_timeout: 2s\n  client_header_timeout: 2s\n")
    yield s
    s.proc.stop()


def test_idle_and_header_deadlines_close_connections(short_timeout_sidecar):
    """Control for the next test: after the handshake, both deadlines work (2 s here)."""
    s = short_timeout_sidecar
    for first in (b"", b"GET / HTTP/1.1\r\nHo"):
        tls = tls_connect(s, timeout=6)
        try:
            if first:
                tls.sendall(first)
            t0 = time.time()
            got = tls.recv(4096)
            assert time.time() - t0 < 4.5
            assert got == b"" or got.startswith(b"HTTP/1.1 4"), got
        finally:
            tls.close()


def test_stalled_handshake_is_closed_by_a_deadline(short_timeout_sidecar):
    s = short_timeout_sidecar
    hello = client_hello(s.ca)
    got, end = raw_tcp_exchange(s.port, hello[:20], timeout=5.0)
    assert s.proc.poll() is None
    expect_safe(end in ("eof", "reset"), f"still open after 5 s (client_idle_timeout 2 s): {got!r}")


def _stalled_after_the_hello(s):
    """A connection whose ClientHello the sidecar answered and that then says nothing more: the
    sidecar is in the middle of its handshake, waiting for the client's Finished."""
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    sock.sendall(client_hello(s.ca))
    assert sock.recv(4096)[:1] == b"\x16"  # the server's flight began
    return sock


def test_a_handshake_stalled_after_the_hello_is_cut_by_the_header_deadline(short_timeout_sidecar):
    s = short_timeout_sidecar
    sock = _stalled_after_the_hello(s)
    t0, end = time.time(), "open"
    try:
        while sock.recv(4096):
            pass
        end = "eof"
    except (socket.timeout, TimeoutError):
        end = "still open"
    except ConnectionResetError:
        end = "reset"
    finally:
        sock.close()
    took = time.time() - t0
    expect_safe(end in ("eof", "reset") and took < 5,
                f"{end} after {took:.1f} s (client_header_timeout 2 s; pingora alone allows 60 s)")


def test_handshakes_past_the_limit_wait_for_a_turn(short_timeout_sidecar):
    """At most 32 handshakes run at once (conn::MAX_HANDSHAKES): with 32 clients stalled in the
    middle of theirs, the next client's handshake waits until the header deadline (2 s) cuts
    them, then succeeds."""
    s = short_timeout_sidecar
    stalled = [_stalled_after_the_hello(s) for _ in range(32)]
    try:
        t0 = time.time()
        tls_connect(s, timeout=10).close()
        took = time.time() - t0
    finally:
        for sock in stalled:
            sock.close()
    assert 1.0 < took < 5, took
    t0 = time.time()
    tls_connect(s, timeout=10).close()  # and with nothing stalled, no wait
    assert time.time() - t0 < 1.0


def sni_of_length(n):
    """A DNS name of n characters made of valid labels (at most 63 letters each)."""
    labels, left = [], n
    while left > 0:
        if labels:
            left -= 1  # the dot
        take = min(63, left)
        labels.append("abcdefghijklmnopqrstuvwxyz"[len(labels) % 26] * take)
        left -= take
    name = ".".join(labels)
    assert len(name) == n, (len(name), n)
    return name


@pytest.mark.parametrize("n", [253, 255])
def test_long_unknown_sni_is_refused(n, sidecar, upstream):
    name = sni_of_length(n)
    assert all(len(label) <= 63 for label in name.split("."))
    with pytest.raises(ssl.SSLError) as e:
        tls_connect(sidecar, sni=name)
    assert "HANDSHAKE_FAILURE" in str(e.value), e.value
    assert_still_serves(sidecar, upstream)


OLD_TLS = {"tls1.0": ssl.TLSVersion.TLSv1, "tls1.1": ssl.TLSVersion.TLSv1_1}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", sorted(OLD_TLS))
def test_old_tls_versions_are_refused_as_such(name, sidecar, upstream):
    ctx = tls_context(sidecar.ca)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ctx.maximum_version = OLD_TLS[name]
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as sock:
        with pytest.raises(ssl.SSLError) as e:
            ctx.wrap_socket(sock, server_hostname=GH)
    # The server's alert says "protocol version", not a cipher or certificate problem.
    assert "ALERT_PROTOCOL_VERSION" in str(e.value), e.value
    flag = {"tls1.0": "-tls1", "tls1.1": "-tls1_1"}[name]
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{sidecar.port}", "-servername", GH,
         flag, "-cipher", "DEFAULT:@SECLEVEL=0"],
        input="", capture_output=True, text=True, timeout=20)
    assert "alert protocol version" in (r.stdout + r.stderr), r.stdout + r.stderr
    assert_still_serves(sidecar, upstream)


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls12_and_tls13_are_accepted(version, sidecar, upstream):
    ctx = tls_context(sidecar.ca)
    v = getattr(ssl.TLSVersion, version)
    ctx.minimum_version = ctx.maximum_version = v
    m = upstream.mark()
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=GH) as tls:
            assert tls.version() == version.replace("_", ".")
            tls.sendall(b"GET /tls-version HTTP/1.1\r\nHost: api.github.com\r\n"
                        b"Connection: close\r\n\r\n")
            raw = b""
            while d := tls.recv(65536):
                raw += d
    assert parse_responses(raw)[0].status == 200, raw
    assert [e["path"] for e in upstream.wait_since(m)] == ["/tls-version"]


# --- 7. a flood of unknown SNIs ---------------------------------------------------------------

def metric(sidecar, name):
    code, _, body, _ = sidecar.curl("/metrics", host="localhost")
    assert code == 200, body
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def vm_rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def flood_sidecar(bin_path, workdir, tokenizer):
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-sni-flood")
    yield s
    s.proc.stop()


def test_ten_thousand_unknown_snis(flood_sidecar, upstream):
    s = flood_sidecar
    assert_still_serves(s, upstream)  # mints api.github.com
    minted = metric(s, "proxypilot_certificates_minted_total")  # mints localhost
    refused = metric(s, 'proxypilot_tls_handshakes_refused_total{reason="unknown_sni"}')
    rss_before = vm_rss_kib(s.proc.p.pid)
    log_before = len(s.proc.output().splitlines())

    ctx = tls_context(s.ca)
    tag = "%08x" % random.getrandbits(32)

    def handshake(i):
        try:
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
                with ctx.wrap_socket(sock, server_hostname=f"n{i}-{tag}.example.com"):
                    return "accepted"
        except ssl.SSLError as e:
            return e.reason or str(e)
        except OSError as e:
            return type(e).__name__

    n = 10_000
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        outcomes = collections.Counter(ex.map(handshake, range(n), chunksize=50))
    took = time.time() - t0
    assert outcomes == {"SSLV3_ALERT_HANDSHAKE_FAILURE": n}, outcomes
    assert took < 30, took

    assert metric(s, "proxypilot_certificates_minted_total") == minted
    assert metric(s, 'proxypilot_tls_handshakes_refused_total{reason="unknown_sni"}') \
        == refused + n
    grew = vm_rss_kib(s.proc.p.pid) - rss_before
    assert grew < 16 * 1024, f"RSS grew by {grew} KiB"
    new_log = s.proc.output().splitlines()[log_before:]
    noisy = [line for line in new_log
             if "refused TLS handshake" in line or "handshake error" in line]
    print(f"SNI flood: {n} handshakes in {took:.1f} s, RSS +{grew} KiB, "
          f"{len(noisy)} handshake log lines")
    assert 0 < len(noisy) <= 100, (len(noisy), noisy[:5])
    assert_still_serves(s, upstream)


# --- 8. HTTP/2 --------------------------------------------------------------------------------

class H2Client:
    """A minimal HTTP/2 client on a TLS socket (ALPN h2) that sends headers as given."""

    def __init__(self, sidecar, sni=GH):
        self.tls = tls_connect(sidecar, alpn=("h2",), sni=sni)
        assert self.tls.selected_alpn_protocol() == "h2"
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False,
                                        validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(cfg)
        self.conn.initiate_connection()
        self.tls.sendall(self.conn.data_to_send())

    def request(self, headers, timeout=5.0):
        """Returns (status, body) or ("reset", code) or ("closed", None)."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=True)
        self.tls.sendall(self.conn.data_to_send())
        status, body = None, b""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.tls.settimeout(max(deadline - time.time(), 0.01))
            try:
                data = self.tls.recv(65536)
            except (socket.timeout, TimeoutError):
                break
            if not data:
                return "closed", None
            for ev in self.conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    status = int(dict(ev.headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    body += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    out = self.conn.data_to_send()
                    if out:
                        self.tls.sendall(out)
                    return status, body
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    return "reset", ev.error_code
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    return "closed", ev.error_code
            out = self.conn.data_to_send()
            if out:
                self.tls.sendall(out)
        raise AssertionError(f"HTTP/2 stream {sid} got no answer in {timeout}s")

    def close(self):
        self.tls.close()


def h2_headers(authority=GH, method="GET", path="/h2", extra=()):
    return [(":method", method), (":scheme", "https"), (":authority", authority),
            (":path", path), *extra]


H2_REFUSED = {
    "authority-other-host": (h2_headers("evil.example.com"), (421,)),
    "host-header-only-other-host": (
        [(":method", "GET"), (":scheme", "https"), (":path", "/h2"),
         ("host", "evil.example.com")], (421,)),
    "authority-and-other-host-header": (h2_headers(extra=[("host", "evil.example.com")]),
                                        (421, 400)),
    "other-authority-and-routed-host-header": (
        h2_headers("evil.example.com", extra=[("host", GH)]), (421, 400)),
    "trace": (h2_headers(method="TRACE", path="/"), (405,)),
    "trace-lowercase": (h2_headers(method="trace", path="/"), (405,)),
}


@pytest.mark.parametrize("name", [
    *sorted(H2_REFUSED),
])
def test_http2_hostile_requests_are_refused(name, sidecar, upstream, tokenizer):
    headers, allowed = H2_REFUSED[name]
    w = Watch(upstream, tokenizer)
    c = H2Client(sidecar)
    try:
        status, body = c.request(headers)
        expect_safe(status in allowed, f"not refused: {status} {body[:300]!r}")
        if status == 421:
            assert b"Misdirected" in body and b"evil.example.com" in body, body
        if status == 405:
            assert b"TRACE is not allowed" in body, body
        w.assert_nothing_forwarded()
        # The same HTTP/2 connection still serves a proper request.
        m = upstream.mark()
        status, body = c.request(h2_headers(path="/h2-after"))
        assert status == 200, body
        assert [e["path"] for e in upstream.wait_since(m)] == ["/h2-after"]
    finally:
        c.close()
    assert_still_serves(sidecar, upstream)


# --- 9. TRACE and TRACK over HTTP/1.1 ---------------------------------------------------------

@pytest.mark.parametrize("method", [
    b"TRACE", b"TRACK", b"track", b"trace", b"Trace",
])
def test_trace_and_track_are_405(method, sidecar, upstream, tokenizer):
    w = Watch(upstream, tokenizer)
    x = exchange(sidecar, method + b" / HTTP/1.1\r\nHost: api.github.com\r\n"
                 b"Authorization: Bearer dummy\r\n\r\n")
    try:
        expect_safe(x.first.status == 405, f"not a 405: {x}")
        assert b"TRACE is not allowed" in x.first.body, x
        w.assert_nothing_forwarded()
    finally:
        assert_still_serves(sidecar, upstream)
