"""An `https://` tokenizer: the sidecar verifies it, reuses it, and keeps TLS spares for it.

Our tokenizer speaks plain HTTP, so a small asyncio TLS terminator (certificate for
`localhost` from the test CA) stands in front of it, the way Fly's proxy fronts the reference.
It counts the TLS handshakes it completes.
"""

import asyncio
import copy
import re
import ssl
import threading
import time

import pytest

from stack import REAL, free_port, headers_of, start_sidecar, start_tokenizer
from test_streaming import tls_conn


class TlsFront(threading.Thread):
    """TLS on 127.0.0.1 and ::1 (one port), relayed as plain TCP to 127.0.0.1:target."""

    def __init__(self, cert, key, target):
        super().__init__(daemon=True)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.target = target
        self.port = free_port()
        self.handshakes = 0
        self.ready = threading.Event()
        self.loop = None

    def run(self):
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.serve())

    async def serve(self):
        self.server = await asyncio.start_server(
            self.handle, host=["127.0.0.1", "::1"], port=self.port, ssl=self.ctx)
        self.ready.set()
        try:
            async with self.server:
                await self.server.serve_forever()
        except asyncio.CancelledError:
            pass

    async def handle(self, r1, w1):
        self.handshakes += 1
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w1.close()
            return

        async def pump(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                w.close()

        await asyncio.gather(pump(r1, w2), pump(r2, w1))

    def stop(self):
        if self.loop:
            self.loop.call_soon_threadsafe(self.server.close)


def https_tokenizer(t, front):
    """The same tokenizer (keys, seal), reached as https://localhost:PORT."""
    h = copy.copy(t)
    h.url = f"https://localhost:{front.port}"
    return h


@pytest.fixture(scope="module")
def closing_behind_tls(bin_path, workdir, pki, upstream):
    t = start_tokenizer(bin_path, workdir, pki, upstream, name="tok-closing-tls",
                        extra=["--close-connections"])
    front = TlsFront(pki / "up.pem", pki / "up.key", t.port)
    front.start()
    assert front.ready.wait(10)
    yield https_tokenizer(t, front), front
    front.stop()
    t.proc.stop()


def post_many(sidecar, n, prefix):
    conn = tls_conn(sidecar)
    for i in range(n):
        conn.request("POST", f"/{prefix}/{i}", body=b"{}",
                     headers={"Authorization": "Bearer dummy"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200, (i, r.status)
        time.sleep(0.01)
    conn.close()


def spares_used(sidecar):
    code, _, body, _ = sidecar.curl("/metrics", host="localhost")
    assert code == 200
    return int(re.search(r"^proxypilot_tokenizer_spares_used_total (\d+)", body, re.M).group(1))


def test_https_tokenizer_with_tls_spares(bin_path, workdir, pki, upstream, closing_behind_tls):
    """Spares for an https:// tokenizer are TLS connections with the handshake already done:
    every request gets the real token upstream, most of them on a spare, and each connection
    is one TLS handshake at the front."""
    t, front = closing_behind_tls
    s = start_sidecar(bin_path, workdir, t, name="sidecar-tls-spares",
                      tokenizer_extra=f"    spares: 2\n    ca: {pki / 'upca.pem'}\n")
    try:
        m = upstream.mark()
        before = front.handshakes
        post_many(s, 20, "tls-spare")
        got = upstream.wait_since(m, n=20)
        assert [e["path"] for e in got] == [f"/tls-spare/{i}" for i in range(20)]
        for e in got:
            h = headers_of(e)
            assert h.get("authorization") == [f"Bearer {REAL['api.github.com']}"]
            assert "proxy-tokenizer" not in h
        assert spares_used(s) >= 10
        # One handshake per request (the tokenizer closes each connection), plus the spares
        # waiting now: nothing was sent in clear or on an unverified connection.
        assert 20 <= front.handshakes - before <= 20 + 2 + 1
    finally:
        s.proc.stop()


def test_https_tokenizer_without_spares(bin_path, workdir, pki, upstream, closing_behind_tls):
    """Without spares pingora makes the TLS connection itself, trusting `tokenizer.ca`."""
    t, _ = closing_behind_tls
    s = start_sidecar(bin_path, workdir, t, name="sidecar-tls-nospares",
                      tokenizer_extra=f"    ca: {pki / 'upca.pem'}\n")
    try:
        m = upstream.mark()
        post_many(s, 3, "tls-nospare")
        got = upstream.wait_since(m, n=3)
        assert headers_of(got[0]).get("authorization") == [f"Bearer {REAL['api.github.com']}"]
    finally:
        s.proc.stop()


@pytest.mark.parametrize("spares", [0, 2])
def test_untrusted_https_tokenizer_is_refused(bin_path, workdir, upstream, closing_behind_tls,
                                              spares):
    """Without the tokenizer's CA the certificate does not verify: 502, nothing reaches the
    upstream, with spares (our TLS) and without (pingora's)."""
    t, _ = closing_behind_tls
    s = start_sidecar(bin_path, workdir, t, name=f"sidecar-tls-untrusted-{spares}",
                      tokenizer_extra=f"    spares: {spares}\n")
    try:
        m = upstream.mark()
        code, _, body, _ = s.curl("/user", extra=["-H", "Authorization: Bearer dummy"],
                                  check=False)
        assert code == 502, (code, body)
        assert upstream.wait_since(m, timeout=0.5) == []
        log = s.proc.output()
        assert re.search(r"invalid certificate|certificate verify failed", log), log
        assert REAL["api.github.com"] not in log
    finally:
        s.proc.stop()


@pytest.mark.parametrize("spares", [0, 2])
def test_https_tokenizer_with_the_wrong_name_is_refused(bin_path, workdir, pki, upstream,
                                                        closing_behind_tls, spares):
    """The chain is trusted (`ca:`) but the certificate does not name the host in the URL (an
    IP here): the name check alone refuses it, with spares (our TLS) and without (pingora's)."""
    t, front = closing_behind_tls
    by_ip = copy.copy(t)
    by_ip.url = f"https://127.0.0.1:{front.port}"
    s = start_sidecar(bin_path, workdir, by_ip, name=f"sidecar-tls-wrongname-{spares}",
                      tokenizer_extra=f"    ca: {pki / 'upca.pem'}\n    spares: {spares}\n")
    try:
        m = upstream.mark()
        code, _, body, _ = s.curl("/user", check=False)
        assert code == 502, (code, body)
        assert upstream.wait_since(m, timeout=0.5) == []
        log = s.proc.output()
        assert re.search(r"invalid certificate|certificate verify failed|hostname mismatch|"
                         r"IP address mismatch", log, re.I), log
    finally:
        s.proc.stop()
