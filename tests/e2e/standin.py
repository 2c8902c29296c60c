"""A recording stand-in for a tokenizer or an upstream, run inside the test process.

It speaks HTTP/1.1 over raw sockets (optionally TLS) and keeps, per connection, every byte it
received, the requests it could parse from them, and any bytes that belonged to no request. Tests
put it where the sidecar's tokenizer (or the tokenizer's upstream) would be and assert exactly
what was written to it. Its `mode` decides how it answers, so the same stand-in injects faults:

    ok            200 with a small JSON body, keep-alive
    close         200 with Connection: close
    hang          read the request, never answer (until stopped)
    reset         read the request, send half a response, then reset the connection (RST)
    reset_before  read the request, then reset without a byte of answer
    garbage       read the request, answer bytes that are not HTTP, close
    sse           answer an endless chunked event stream, one event every 50 ms
    sse_stall     answer a chunked event stream, two events, then nothing more (until stopped)

    s = Standin().start(); ...; s.stop()
"""

import json
import socket
import ssl
import struct
import threading
import time


class Request:
    def __init__(self, line, headers, body, chunked, raw):
        self.line = line            # the request line, as text
        self.headers = headers      # [(name, value)] in order, as sent
        self.body = body            # the de-chunked body
        self.chunked = chunked
        self.raw = raw              # the exact bytes of this request

    @property
    def method(self):
        return self.line.split(" ", 1)[0]

    @property
    def target(self):
        return self.line.split(" ")[1]

    def all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return f"Request({self.line!r}, {len(self.headers)} headers, {len(self.body)} body bytes)"


class Conn:
    def __init__(self):
        self.raw = bytearray()      # every byte received on this connection
        self.requests = []
        self.stray = bytearray()    # bytes that were not part of any request
        self.closed_by_peer = False  # the peer closed (EOF, reset or a failed write)
        self.ended = threading.Event()
        self.sock = None            # the server's socket, while it serves this connection


class _Reader:
    """Reads a socket, keeping a copy of every byte in conn.raw."""

    def __init__(self, sock, conn):
        self.sock = sock
        self.conn = conn
        self.buf = bytearray()

    def fill(self):
        try:
            data = self.sock.recv(65536)
        except (OSError, ssl.SSLError):
            data = b""
        if not data:
            self.conn.closed_by_peer = True
            return False
        self.conn.raw += data
        self.buf += data
        return True

    def until(self, sep):
        while sep not in self.buf:
            if not self.fill():
                return None
        i = self.buf.index(sep) + len(sep)
        out = bytes(self.buf[:i])
        del self.buf[:i]
        return out

    def exactly(self, n):
        while len(self.buf) < n:
            if not self.fill():
                return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class Standin:
    def __init__(self, mode="ok", tls=None, host="127.0.0.1", only_path=None):
        """`tls`: (certfile, keyfile) to speak TLS, as an upstream would. With `only_path`, the
        mode applies only to requests whose target contains it; the others get `ok`."""
        self.mode = mode
        self.only_path = only_path
        self.conns = []
        self.accepted = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._tls = None
        if tls:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)
            self._tls.set_alpn_protocols(["http/1.1"])
        self._threads = []

    # ---- lifecycle

    def start(self):
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- what was received

    def requests(self):
        with self._lock:
            return [r for c in self.conns for r in c.requests]

    def wait_requests(self, n, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.requests()) >= n:
                break
            time.sleep(0.02)
        return self.requests()

    def clear(self):
        """Forget what was received so far (connections still open stay, emptied), and reset
        the count of accepted connections. Call it between requests."""
        with self._lock:
            self.conns = [c for c in self.conns if not c.ended.is_set()]
            for c in self.conns:
                c.raw.clear()
                c.requests.clear()
                c.stray.clear()
            self.accepted = 0

    def _open_conns(self):
        with self._lock:
            return [c for c in self.conns if c.sock and not c.ended.is_set()]

    def close_open(self):
        """Close every connection still open from this side (a FIN to the peer), as a server
        ends its idle keep-alive connections. Returns how many it closed."""
        open_conns = self._open_conns()
        for c in open_conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for c in open_conns:
            c.ended.wait(5)
        return len(open_conns)

    def send_on_open(self, data):
        """Write `data` on every connection still open, between requests: bytes a server sends
        on an idle keep-alive connection. Returns how many connections got them."""
        open_conns = self._open_conns()
        for c in open_conns:
            try:
                c.sock.sendall(data)
            except OSError:
                pass
        return len(open_conns)

    # ---- serving

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                s, _ = self._sock.accept()
            except OSError:
                return
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn()
            with self._lock:
                self.conns.append(conn)
                self.accepted += 1
            t = threading.Thread(target=self._serve, args=(s, conn), daemon=True)
            t.start()

    def _serve(self, s, conn):
        try:
            if self._tls:
                try:
                    s = self._tls.wrap_socket(s, server_side=True)
                except (OSError, ssl.SSLError):
                    conn.closed_by_peer = True
                    return
            s.settimeout(None)
            conn.sock = s
            r = _Reader(s, conn)
            while not self._stop.is_set():
                req = self._read_request(r)
                if req is None:
                    return
                conn.requests.append(req)
                if not self._answer(s, conn, req):
                    return
        finally:
            conn.ended.set()
            try:
                s.close()
            except OSError:
                pass

    def _read_request(self, r):
        head = r.until(b"\r\n\r\n")
        if head is None:
            r.conn.stray += r.buf
            return None
        lines = head[:-4].split(b"\r\n")
        line = lines[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            # Not a request line: whatever this is belongs to no request.
            r.conn.stray += head + r.buf
            return None
        headers = []
        for h in lines[1:]:
            k, _, v = h.decode("latin-1").partition(":")
            headers.append((k, v.strip()))
        lower = {k.lower(): v for k, v in headers}
        raw = bytearray(head)
        body = bytearray()
        chunked = "chunked" in lower.get("transfer-encoding", "").lower()
        if chunked:
            while True:
                size_line = r.until(b"\r\n")
                if size_line is None:
                    return None
                raw += size_line
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers, then the empty line
                    while True:
                        t = r.until(b"\r\n")
                        if t is None:
                            return None
                        raw += t
                        if t == b"\r\n":
                            break
                    break
                data = r.exactly(size + 2)
                if data is None:
                    return None
                raw += data
                body += data[:-2]
        else:
            n = int(lower.get("content-length", "0") or 0)
            data = r.exactly(n)
            if data is None:
                return None
            raw += data
            body += data
        return Request(line, headers, bytes(body), chunked, bytes(raw))

    def _answer(self, s, conn, req):
        """Answer per the current mode; False when the connection is done."""
        mode = self.mode
        if self.only_path and self.only_path not in req.target:
            mode = "ok"
        try:
            if mode in ("ok", "close"):
                body = json.dumps({"ok": True, "target": req.target}).encode()
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n")
                if mode == "close":
                    head += "Connection: close\r\n"
                s.sendall(head.encode() + b"\r\n" + body)
                return mode == "ok"
            if mode == "hang":
                self._stop.wait()
                return False
            if mode in ("reset", "reset_before"):
                if mode == "reset":
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
                    time.sleep(0.05)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return False
            if mode == "garbage":
                s.sendall(b"\x00\x01garbage, not HTTP at all\r\n\r\n")
                return False
            if mode == "sse":
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")
                i = 0
                while not self._stop.is_set():
                    ev = f"data: {i}\n\n".encode()
                    s.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                    i += 1
                    time.sleep(0.05)
                return False
            if mode == "sse_stall":
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")
                for i in range(2):
                    ev = f"data: {i}\n\n".encode()
                    s.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                self._stop.wait()
                return False
            raise ValueError(f"unknown mode {mode}")
        except (OSError, ssl.SSLError):
            conn.closed_by_peer = True
            return False


class Blackhole:
    """A listener that never accepts and whose queue is full: connecting to it hangs (SYNs are
    dropped), like a tokenizer that is slow to connect."""

    def __init__(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(0)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._fillers = []
        # Fill the accept queue (and then some) so further SYNs go unanswered.
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            try:
                f.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self._fillers.append(f)
        time.sleep(0.2)

    def close(self):
        for f in self._fillers:
            f.close()
        self._sock.close()
