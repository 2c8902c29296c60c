#!/usr/bin/env python3
"""A TCP relay that makes a keep-alive HTTP/1.1 server look like a distant one that closes every
connection: the "tokenizer that closes each connection" scenario of `make bench`.

    python3 bench/relay.py --target 127.0.0.1:8080 --rtt-ms 10 --ready port.txt

For every accepted connection it opens a new connection to --target and
- rewrites the request's `Connection` header to `Connection: close` (so the target closes after
  its response) and the response's to `Connection: close` (so the client does not reuse it);
- closes both sides after the response: when the target closes, or when the response's
  Content-Length is complete;
- delays data by half the round trip in each direction, and the first request bytes by one more
  round trip counted from accept, as TCP's handshake would on a real network. A client that
  connected in advance (a "spare") has already paid that round trip when it sends its request;
  one that connects per request pays it on the request's critical path.

With --tls-cert/--tls-key it is an `https://` tokenizer: it terminates TLS (listening on
127.0.0.1 and ::1, one port, for `https://localhost:PORT`) and the first request bytes wait one
round trip more, for TLS 1.3's handshake.

Only for benchmarks: one request per connection, no pipelining, heads up to 64 KiB.
"""

import argparse
import asyncio
import os
import re
import socket
import ssl

HEAD_LIMIT = 64 * 1024
CONNECTION_RE = re.compile(rb"^(connection|keep-alive|proxy-connection)\s*:.*$", re.I | re.M)
CONTENT_LENGTH_RE = re.compile(rb"^content-length\s*:\s*(\d+)\s*$", re.I | re.M)


def force_close(head: bytes) -> bytes:
    """The head (ending in CRLF CRLF) with Connection/Keep-Alive replaced by Connection: close."""
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0]] + [line for line in lines[1:] if not CONNECTION_RE.match(line)]
    return b"\r\n".join(kept + [b"Connection: close"]) + b"\r\n\r\n"


class DelayedWriter:
    """Writes each piece at its own due time, in order, without serialising the delays."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    def send(self, data: bytes, at: float):
        self.queue.put_nowait((at, data))

    def finish(self, at: float):
        self.queue.put_nowait((at, None))

    async def _run(self):
        loop = asyncio.get_running_loop()
        try:
            while True:
                at, data = await self.queue.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    break
                self.writer.write(data)
                await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.writer.close()

    async def stop(self):
        """Let queued data go out, unless the peer is gone."""
        if not self.task.done():
            self.finish(asyncio.get_running_loop().time())
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 5)
        except asyncio.TimeoutError:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Relay:
    def __init__(self, target, rtt, tls=False):
        self.target = target
        self.half = rtt / 2.0
        self.rtt = rtt
        # Round trips before the first request byte can leave: TCP's handshake, and TLS 1.3's.
        self.setup = rtt * (2 if tls else 1)
        self.connections = 0

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter):
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        self.connections += 1
        uwriter = None
        pumps = []
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
            for w in (cwriter, uwriter):
                w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            to_target = DelayedWriter(uwriter)
            to_client = DelayedWriter(cwriter)
            pumps = [to_client, to_target]

            async def client_to_target():
                try:
                    head = await creader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    to_target.finish(loop.time())
                    return
                # The handshake round trip(s), then half a round trip to reach the target.
                first = max(loop.time(), accepted + self.setup) + self.half
                to_target.send(force_close(head), first)
                while True:
                    try:
                        data = await creader.read(65536)
                    except ConnectionError:
                        data = b""
                    if not data:
                        break
                    to_target.send(data, max(first, loop.time() + self.half))
                # Half-close is not forwarded: the response still has to come back.

            async def target_to_client():
                try:
                    head = await ureader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    to_client.finish(loop.time() + self.half)
                    return
                m = CONTENT_LENGTH_RE.search(head)
                left = int(m.group(1)) if m else None
                to_client.send(force_close(head), loop.time() + self.half)
                while left is None or left > 0:
                    try:
                        data = await ureader.read(65536)
                    except ConnectionError:
                        data = b""
                    if not data:
                        break
                    if left is not None:
                        left -= len(data)
                    to_client.send(data, loop.time() + self.half)
                to_client.finish(loop.time() + self.half)

            up = asyncio.create_task(client_to_target())
            try:
                await target_to_client()
                await to_client.stop()
            finally:
                up.cancel()
                await asyncio.gather(up, return_exceptions=True)
        except (ConnectionError, OSError):
            pass
        finally:
            for pump in pumps:
                await pump.stop()
            for w in (cwriter, uwriter):
                if w is not None:
                    w.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--target", required=True, help="HOST:PORT of the keep-alive server")
    ap.add_argument("--rtt-ms", type=float, default=10.0, help="simulated round trip (ms)")
    ap.add_argument("--ready", help="file to write the bound port into")
    ap.add_argument("--tls-cert", help="serve TLS with this certificate (PEM; needs --tls-key)")
    ap.add_argument("--tls-key")
    a = ap.parse_args()
    lhost, _, lport = a.listen.rpartition(":")
    thost, _, tport = a.target.rpartition(":")
    ctx = None
    if a.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
    relay = Relay((thost, int(tport)), a.rtt_ms / 1000.0, tls=ctx is not None)
    port = int(lport)
    if ctx is not None and port == 0:
        with socket.socket() as probe:  # one port free on 127.0.0.1, used on ::1 too
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    hosts = ["127.0.0.1", "::1"] if ctx is not None else lhost
    server = await asyncio.start_server(
        relay.handle, hosts, port, limit=HEAD_LIMIT, backlog=4096, ssl=ctx
    )
    port = server.sockets[0].getsockname()[1]
    if a.ready:
        with open(a.ready + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(a.ready + ".tmp", a.ready)
    else:
        print(port, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
