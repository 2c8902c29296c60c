"""A local HTTPS upstream for end-to-end tests: it stands in for api.github.com and friends.

It echoes what it received as JSON and appends every request (method, path, headers, body
length and sha256) to a JSON-lines log, so tests can assert what reached "the real API".

    python3 upstream.py --cert up.pem --key up.key --port 0 --log requests.jsonl --ready ready.txt

Routes: anything -> 200 JSON echo (credential header values redacted); /status/NNN -> that status; /sse?n=N&gap_ms=G -> server-sent
events; /bytes/N -> N bytes; POST bodies are read fully (hashed, not stored).

So that the real SDKs can parse the answer, two API shapes are faked:
POST /v1/messages -> a minimal Anthropic Message (or its event stream with "stream": true) and
POST /v1/chat/completions -> a minimal OpenAI chat.completion (or its chunk stream). The reply's
text is "echo: " + the last user message's text, and its model is the requested model.
GET .../info/refs?service=git-upload-pack -> git's smart-HTTP advertisement of an empty repository.
"""

import argparse
import hashlib
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def _last_user_text(req):
    """The text of the last user message of an Anthropic or OpenAI request body."""
    for msg in reversed(req.get("messages") or []):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(
                part.get("text", "") for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
    return ""


def _pieces(text, n=3):
    """The text cut into up to n non-empty pieces, to stream as several deltas."""
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def anthropic_message(req, text):
    return {
        "id": "msg_echo",
        "type": "message",
        "role": "assistant",
        "model": req.get("model", "echo"),
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": len(_pieces(text))},
    }


def anthropic_events(req, text):
    start = dict(anthropic_message(req, text), content=[], stop_reason=None)
    start["usage"] = {"input_tokens": 1, "output_tokens": 0}
    yield "message_start", {"type": "message_start", "message": start}
    yield "content_block_start", {
        "type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    for piece in _pieces(text):
        yield "content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": piece}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield "message_delta", {
        "type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": len(_pieces(text))}}
    yield "message_stop", {"type": "message_stop"}


def openai_completion(req, text):
    return {
        "id": "chatcmpl-echo",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.get("model", "echo"),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def openai_chunks(req, text):
    base = {"id": "chatcmpl-echo", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": req.get("model", "echo")}
    deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in _pieces(text)]
    for d in deltas:
        yield None, dict(base, choices=[{"index": 0, "delta": d, "logprobs": None,
                                         "finish_reason": None}])
    yield None, dict(base, choices=[{"index": 0, "delta": {}, "logprobs": None,
                                     "finish_reason": "stop"}])
    yield None, "[DONE]"


# Only these request headers are echoed with their values; every other value (Authorization,
# X-Api-Key, any injected header) is shown as "<redacted>", so that a response body never carries
# a credential back to the client. The request log keeps everything for the tests' assertions.
ECHOED = {"host", "user-agent", "accept", "content-type", "content-length", "transfer-encoding",
          "connection", "accept-encoding", "x-request"}


def redacted(headers):
    return {k: (v if k.lower() in ECHOED else "<redacted>") for k, v in headers}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_lock = threading.Lock()

    def log_message(self, fmt, *args):  # quiet
        pass

    def setup(self):
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
        # meets the peer's delayed ACK and every response stalls ~40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            h = hashlib.sha256()
            n = 0
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunk = self.rfile.read(size)
                self.rfile.readline()
                h.update(chunk)
                n += len(chunk)
                if len(data) < 1 << 16:
                    data += chunk
            return n, h.hexdigest(), bytes(data[: 1 << 16])
        length = int(self.headers.get("Content-Length") or 0)
        h = hashlib.sha256()
        remaining = length
        data = bytearray()
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
            if len(data) < 1 << 16:
                data += chunk
        return length - remaining, h.hexdigest(), bytes(data[: 1 << 16])

    def _record(self, body_len, body_sha, body_head):
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_len": body_len,
            "body_sha256": body_sha,
            "body_head": body_head.decode("utf-8", "replace"),
            "peer": self.client_address[0],
            "t": time.time(),
        }
        with self.log_lock, open(self.server.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        return entry

    def _send(self, status, body, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_events(self, events):
        """Server-sent events, one chunk each, with a short gap so they arrive apart."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for name, data in events:
            payload = (f"event: {name}\n" if name else "") + "data: " + (
                data if isinstance(data, str) else json.dumps(data)) + "\n\n"
            payload = payload.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            self.wfile.flush()
            time.sleep(0.005)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _fake_api(self, path, body_head):
        """The minimal Anthropic / OpenAI answers the SDKs parse; False for other paths."""
        if self.command != "POST" or path not in ("/v1/messages", "/v1/chat/completions"):
            return False
        try:
            req = json.loads(body_head)
        except ValueError:
            req = {}
        if not isinstance(req, dict):
            req = {}
        text = "echo: " + _last_user_text(req)
        anthropic = path == "/v1/messages"
        if req.get("stream"):
            self._send_events(anthropic_events(req, text) if anthropic
                              else openai_chunks(req, text))
        else:
            reply = anthropic_message(req, text) if anthropic else openai_completion(req, text)
            self._send(200, json.dumps(reply).encode())
        return True

    def handle_any(self):
        body_len, body_sha, body_head = self._read_body()
        entry = self._record(body_len, body_sha, body_head)
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        if self._fake_api(url.path, body_head):
            return
        if url.path.endswith("/info/refs") and q.get("service") == ["git-upload-pack"]:
            # pkt-lines: the service announcement, a flush, then no refs and a flush.
            return self._send(200, b"001e# service=git-upload-pack\n00000000",
                              "application/x-git-upload-pack-advertisement")
        if url.path.startswith("/status/"):
            code = int(url.path.split("/")[2])
            shown = dict(entry, headers=redacted(entry["headers"]))
            return self._send(code, json.dumps(shown).encode())
        if url.path.startswith("/bytes/"):
            n = int(url.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = bytes(range(256)) * 4096
            sent = 0
            while sent < n:
                piece = block[: min(len(block), n - sent)]
                self.wfile.write(piece)
                sent += len(piece)
            return
        if url.path == "/sse":
            n = int(q.get("n", ["5"])[0])
            gap = int(q.get("gap_ms", ["20"])[0]) / 1000.0
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(n):
                payload = f"id: {i}\ndata: {{\"i\": {i}, \"sent\": {time.time()}}}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
                self.wfile.flush()
                time.sleep(gap)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        # Echo: the shape SDKs and gh can parse (a JSON object), plus what we saw.
        out = {
            "echo": True,
            "id": "msg_echo",
            "object": "echo",
            "login": "echo-user",
            "method": self.command,
            "path": self.path,
            "headers": redacted(self.headers.items()),
            "body_len": body_len,
        }
        self._send(200, json.dumps(out).encode())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", required=True)
    ap.add_argument("--ready", required=True, help="file to write the bound port into")
    a = ap.parse_args()
    srv = ThreadingHTTPServer((a.host, a.port), Handler)
    srv.daemon_threads = True
    srv.log_path = a.log
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["http/1.1"])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    with open(a.ready + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os

    os.replace(a.ready + ".tmp", a.ready)
    srv.serve_forever()


if __name__ == "__main__":
    main()
