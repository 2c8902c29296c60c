"""WebSockets through the sidecar and our tokenizer, over both listeners: the Upgrade goes
client -> sidecar -> tokenizer -> upstream with the real credential injected on the upgrade
request, then frames flow both ways until a clean close.

The upstream is a real WebSocket server (the `websockets` library, over TLS with the test PKI)
that echoes every message, can send messages of its own ("tick N"), and records each upgrade
request's headers and how each connection closed. The client is the same library. Our tokenizer
is pinned to that upstream for api.openai.com (`--connect-to`). The sidecar runs with short
client deadlines (header 1 s, idle 2 s) to show that they do not cut an upgraded connection.
"""

import asyncio
import base64
import json
import os
import socket
import ssl
import threading
import time

import pytest

from stack import DUMMY, REAL, free_port, start_sidecar, start_tokenizer, wait_port

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.asyncio.server import serve  # noqa: E402

HOST = "api.openai.com"


class EchoUpstream:
    """A TLS WebSocket echo server in a thread of its own."""

    def __init__(self, pki):
        self.pki = pki
        self.seen = []    # each upgrade request: {"path", "headers"}
        self.closed = []  # each connection's close code as the server saw it
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.main(),),
                                       daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def handler(self, ws):
        self.seen.append({"path": ws.request.path,
                          "headers": {k.lower(): v for k, v in ws.request.headers.raw_items()}})
        async for msg in ws:
            if isinstance(msg, str) and msg.startswith("tick "):
                for i in range(int(msg.split()[1])):
                    await asyncio.sleep(0.05)
                    await ws.send(f"tick {i}")
            else:
                await ws.send(msg if isinstance(msg, bytes) else "echo:" + msg)
        self.closed.append(ws.close_code)

    @staticmethod
    async def slow_101(connection, request):
        """`?slow101` holds the 101 back a while (the client's frame gets there first)."""
        if "slow101" in request.path:
            await asyncio.sleep(0.3)

    async def main(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.pki / "up.pem"), str(self.pki / "up.key"))
        self.stop_event = asyncio.Event()
        async with serve(self.handler, "127.0.0.1", 0, ssl=ctx,
                         process_request=self.slow_101) as server:
            self.port = server.sockets[0].getsockname()[1]
            self.ready.set()
            await self.stop_event.wait()

    def stop(self):
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(5)


@pytest.fixture(scope="module")
def ws_stack(bin_path, workdir, pki):
    up = EchoUpstream(pki)
    tok = start_tokenizer(bin_path, workdir, pki, up, name="ws-tokenizer")
    pport = free_port()
    s = start_sidecar(bin_path, workdir, tok, name="ws-sidecar",
                      section_extra=(f'  proxy_listen: ["127.0.0.1:{pport}"]\n'
                                     "  client_header_timeout: 1s\n"
                                     "  client_idle_timeout: 2s\n"))
    wait_port(pport, s.proc)
    s.proxy_port = pport
    s.tokenizer = tok
    yield up, s
    s.proc.stop()
    tok.proc.stop()
    up.stop()


def through_connect(proxy_port):
    """A socket to the proxy listener after `CONNECT api.openai.com:443` was answered 200."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    sock.sendall(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: nothing of the tunnel is read here
    assert head.startswith(b"HTTP/1.1 200"), head
    sock.setblocking(False)
    return sock


def open_ws(s, listener, path="/v1/realtime"):
    """An (async) connect to the sidecar's `listener` ("tls" or "proxy"), or straight to the
    tokenizer ("tokenizer": plain HTTP with the sealed secret, as a shell that skips the
    sidecar would)."""
    ctx = ssl.create_default_context(cafile=str(s.ca))
    headers = {"Authorization": f"Bearer {DUMMY}"}
    if listener == "tokenizer":
        return connect(f"ws://{HOST}{path}", host="127.0.0.1", port=s.tokenizer.port,
                       additional_headers={"Proxy-Tokenizer": s.env["PP_SEALED_OPENAI"]},
                       open_timeout=10, proxy=None)
    if listener == "tls":
        return connect(f"wss://{HOST}:{s.port}{path}", ssl=ctx, host="127.0.0.1",
                       port=s.port, server_hostname=HOST, additional_headers=headers,
                       open_timeout=10, proxy=None)
    return connect(f"wss://{HOST}{path}", ssl=ctx, sock=through_connect(s.proxy_port),
                   server_hostname=HOST, additional_headers=headers, open_timeout=10,
                   proxy=None)


def assert_real_credential(entry):
    h = entry["headers"]
    assert h.get("authorization") == f"Bearer {REAL[HOST]}", h
    assert "proxy-tokenizer" not in h and "proxy-authorization" not in h, h
    assert DUMMY not in json.dumps(h).lower()
    assert h.get("upgrade", "").lower() == "websocket", h


@pytest.mark.parametrize("listener", ["tls", "proxy", "tokenizer"])
def test_echo_both_ways_and_a_clean_close(ws_stack, listener):
    up, s = ws_stack
    n_seen, n_closed = len(up.seen), len(up.closed)

    async def session():
        async with open_ws(s, listener, path=f"/v1/realtime?via={listener}") as ws:
            for i in range(5):
                await ws.send(f"m{i}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"echo:m{i}"
            blob = bytes(range(256)) * 300  # 75 KiB, binary, several TLS records
            await ws.send(blob)
            assert await asyncio.wait_for(ws.recv(), 5) == blob
            await ws.send("tick 3")  # the server speaks on its own
            got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(3)]
            assert got == ["tick 0", "tick 1", "tick 2"]
            await ws.close()
            return ws.close_code

    assert asyncio.run(session()) == 1000
    deadline = time.time() + 5
    while len(up.closed) == n_closed and time.time() < deadline:
        time.sleep(0.05)
    assert up.closed[n_closed:] == [1000]
    entry = up.seen[n_seen]
    assert entry["path"] == f"/v1/realtime?via={listener}"
    assert_real_credential(entry)


@pytest.mark.parametrize("listener", ["tls", "proxy"])
def test_a_long_lived_connection_outlives_the_client_deadlines(ws_stack, listener):
    """Quiet stretches longer than the client idle (2 s) and header (1 s) deadlines, and
    messages across 5 s, on one upgraded connection."""
    up, s = ws_stack

    async def session():
        async with open_ws(s, listener) as ws:
            t0 = time.monotonic()
            for i, gap in enumerate([0.2, 2.5, 0.5, 2.2]):
                await asyncio.sleep(gap)
                await ws.send(f"late {i}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"echo:late {i}"
            await ws.send("tick 2")
            assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(2)] == \
                ["tick 0", "tick 1"]
            assert time.monotonic() - t0 > 5
            await ws.close()
            return ws.close_code

    assert asyncio.run(session()) == 1000


@pytest.mark.parametrize("listener", ["tls", "proxy", "tokenizer"])
def test_a_first_frame_right_after_the_101_is_never_lost(ws_stack, listener):
    """Many connections, each sending the moment it has read the 101: each frame must arrive
    and be answered (two pingora races ended such connections early; vendor/README.md)."""
    up, s = ws_stack

    async def one(i):
        async with open_ws(s, listener) as ws:
            await ws.send(f"first {i}")
            reply = await asyncio.wait_for(ws.recv(), 5)
            await ws.close()
            return reply

    async def many():
        out = []
        for batch in range(4):
            out += await asyncio.gather(*(one(batch * 10 + i) for i in range(10)),
                                        return_exceptions=True)
        return out

    replies = asyncio.run(many())
    failed = [r for r in replies if not isinstance(r, str)]
    assert not failed, failed[:3]
    assert replies == [f"echo:first {i}" for i in range(40)]


def raw_socket(s, listener):
    """A connected (TLS for the sidecar) blocking socket for a hand-made upgrade."""
    if listener == "tokenizer":
        return socket.create_connection(("127.0.0.1", s.tokenizer.port), timeout=5)
    ctx = ssl.create_default_context(cafile=str(s.ca))
    ctx.set_alpn_protocols(["http/1.1"])
    if listener == "tls":
        raw = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    else:
        raw = through_connect(s.proxy_port)
        raw.setblocking(True)
        raw.settimeout(5)
    return ctx.wrap_socket(raw, server_hostname=HOST)


def masked_text(text):
    """One client text frame (FIN, masked), payload under 126 bytes."""
    data = text.encode()
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4]
                                                         for i, b in enumerate(data))


@pytest.mark.parametrize("listener", ["tls", "proxy", "tokenizer"])
def test_a_frame_that_arrives_while_the_101_is_on_its_way_is_kept(ws_stack, listener):
    """The race behind vendor/README.md, made certain: the upstream holds its 101 back, and the
    client's first frame reaches the sidecar (or tokenizer) while it waits for it. pingora
    0.9.1 took that frame for bytes after the end of the request and dropped the connection;
    it must instead arrive first on the upgraded connection."""
    up, s = ws_stack
    sock = raw_socket(s, listener)
    extra = (f"Authorization: Bearer {DUMMY}\r\n" if listener != "tokenizer"
             else f"Proxy-Tokenizer: {s.env['PP_SEALED_OPENAI']}\r\n")
    sock.sendall((f"GET /v1/realtime?slow101 HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                  f"{extra}\r\n").encode())
    time.sleep(0.1)  # the request is on its way upstream; the 101 is not back yet
    sock.sendall(masked_text("early"))
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(4096)
        assert d, buf
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    want = b"echo:early"
    while len(rest) < 2 + len(want):
        d = sock.recv(4096)
        assert d, f"closed after {rest!r}: the early frame was lost"
        rest += d
    assert rest[:2 + len(want)] == bytes([0x81, len(want)]) + want
    sock.close()
