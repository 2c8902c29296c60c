"""Leak proof: a whole session at RUST_LOG=trace, then a search for every secret it handled.

This module starts processes of its own (so it does not depend on test order or on what other
tests logged), every one at RUST_LOG=trace: a tokenizer that checks bearer passwords and Fly-Src,
a sidecar with a tokenizer password and routes of three kinds (inject, x-api-key, HMAC), a
drop-in sidecar whose PROXY carries a password, a sidecar whose tokenizer is down and one whose
tokenizer hangs. It drives every route (HTTP/1.1 and HTTP/2, a query string, SSE, uploads), every
refusal (421, 405, 400, 407, 502, 504, bad secrets, bad params, a client that leaves mid-upload)
and the admin answers. Then it searches every log file, every response the clients got (status
line, headers and body) and /metrics for the real tokens, the sealed blobs, every password and
Proxy-Authorization value, the HMAC key, OPEN_KEY and the CA key: zero hits.
"""

import base64
import http.client
import json
import socket
import struct
import subprocess
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stack import (DUMMY, HOSTS, Proc, free_port, keygen, read_response, sidecar_yaml,
                      seal_raw, wait_port)
from standin import Standin

TOKENS = {
    "api.github.com": "ghp_TRACEgithubTOKEN0123456789abcdef",
    "api.anthropic.com": "sk-ant-TRACEanthropicKEY0123456789",
}
HMAC_KEY = b"trace-hmac-signing-key-0123456789"
TOKENIZER_PW = "tok-password-TRACE-0123456789"
DROPIN_PW = "dropin-password-TRACE-0123456789"
PROXY_PW = "proxy-listener-password-TRACE-0123456789"
CLIENT_PROXY_AUTH = "Bearer client-proxy-auth-TRACE-0123456789"
QUERY_SECRET = "query-secret-TRACE-0123456789"
BODY_TOKEN = "body-token-TRACE-0123456789"
FLY_SEED = "22" * 32
TRACE = {"RUST_LOG": "trace"}


class World:
    """Everything the session started, and everything it saw."""

    def __init__(self, d):
        self.dir = d
        self.procs = []
        self.seen = []       # every response: status line + headers + body, as text
        self.secrets = {}    # name -> value that must appear nowhere

    def proc(self, name, args, env=None, cwd=None):
        p = Proc(name, args, env={**TRACE, **(env or {})}, cwd=cwd, log_dir=self.dir)
        self.procs.append(p)
        return p

    def keep(self, status, headers, body):
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        self.seen.append(f"{status}\n{json.dumps(headers)}\n{body}")


def curl(world, port, path, host="api.github.com", extra=(), ca=None):
    args = ["curl", "-sS", "-i", "--max-time", "20", "--resolve", f"{host}:{port}:127.0.0.1",
            "--cacert", str(ca), *extra, f"https://{host}:{port}{path}"]
    r = subprocess.run(args, capture_output=True, timeout=60)
    out = r.stdout.decode("utf-8", "replace")
    world.seen.append(out + r.stderr.decode("utf-8", "replace"))
    return out


def status_of(curl_out):
    lines = [l for l in curl_out.splitlines() if l.startswith("HTTP/")]
    return int(lines[-1].split()[1]) if lines else 0


def send_tokenizer(world, port, host, headers, path="/t", body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    c.request("POST" if body is not None else "GET", f"http://{host}{path}", body=body,
              headers=headers)
    r = c.getresponse()
    data = r.read()
    world.keep(r.status, r.getheaders(), data)
    c.close()
    return r.status


@pytest.fixture(scope="module")
def world(bin_path, workdir, pki, upstream):
    d = workdir / "leaks"
    d.mkdir()
    w = World(d)
    open_key, seal_key = keygen(bin_path)
    seal = lambda obj: seal_raw(seal_key, json.dumps(obj))  # noqa: E731
    pub = d / "fly-src.pub"
    pub.write_text(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(FLY_SEED)).public_key()
                   .public_bytes_raw().hex())
    digest = lambda pw: base64.b64encode(  # noqa: E731
        __import__("hashlib").sha256(pw.encode()).digest()).decode()

    sealed = {
        "PP_SEALED_GITHUB": seal({"inject_processor": {"token": TOKENS["api.github.com"]},
                                  "bearer_auth": {"digest": digest(TOKENIZER_PW)},
                                  "allowed_hosts": ["api.github.com"]}),
        "PP_SEALED_ANTHROPIC": seal({"inject_processor": {"token": TOKENS["api.anthropic.com"],
                                                          "dst": "X-Api-Key", "fmt": "%s"},
                                     "bearer_auth": {"digest": digest(TOKENIZER_PW)},
                                     "allowed_hosts": ["api.anthropic.com"]}),
        "PP_SEALED_OPENAI": seal({"inject_hmac_processor": {
            "key": base64.b64encode(HMAC_KEY).decode(), "hash": "sha256"},
            "bearer_auth": {"digest": digest(TOKENIZER_PW)},
            "allowed_hosts": ["api.openai.com"]}),
    }
    dropin_sealed = seal({"inject_processor": {"token": TOKENS["api.github.com"]},
                          "bearer_auth": {"digest": digest(DROPIN_PW)},
                          "allowed_hosts": ["api.github.com"]})
    body_sealed = seal({"inject_body_processor": {"token": BODY_TOKEN}, "no_auth": {},
                        "allowed_hosts": ["api.github.com"]})
    w.secrets.update({f"token {h}": v for h, v in TOKENS.items()})
    w.secrets.update({f"sealed {k}": v for k, v in sealed.items()})
    w.secrets.update({"sealed dropin": dropin_sealed, "sealed body": body_sealed,
                      "hmac key": HMAC_KEY.decode(),
                      "hmac key b64": base64.b64encode(HMAC_KEY).decode(),
                      "hmac key hex": HMAC_KEY.hex(),
                      "tokenizer password": TOKENIZER_PW, "dropin password": DROPIN_PW,
                      "dropin basic": base64.b64encode(f"u:{DROPIN_PW}".encode()).decode(),
                      "proxy listener password": PROXY_PW,
                      "proxy listener basic": base64.b64encode(
                          f"agent:{PROXY_PW}".encode()).decode(),
                      "client proxy-authorization": CLIENT_PROXY_AUTH.split()[1],
                      "query secret": QUERY_SECRET, "body token": BODY_TOKEN,
                      "open key": open_key, "fly seed": FLY_SEED})
    for k, v in list(w.secrets.items()):
        if k.startswith("sealed"):
            # a piece of a sealed blob is a leak too
            w.secrets[k + " (head)"] = v[:32]
            w.secrets[k + " (tail)"] = v[-32:]

    tport = free_port()
    targs = [bin_path, "tokenizer", "--listen", f"127.0.0.1:{tport}", "--upstream-ca",
             str(pki / "upca.pem"), "--use-fly-src", "--fly-src-pubkey", str(pub),
             "--fly-src-trusted-net", "127.0.0.0/8"]
    for h in HOSTS:
        targs += ["--connect-to", f"{h}:443:127.0.0.1:{upstream.port}"]
    tok = w.proc("leak-tokenizer", targs, env={"OPEN_KEY": open_key})
    wait_port(tport, tok)
    w.tport, w.seal_key, w.body_sealed = tport, seal_key, body_sealed

    def sidecar(name, tokenizer_url, tokenizer_extra="", section_extra="", env=None):
        sd = d / name
        sd.mkdir()
        port = free_port()
        conf = sd / "proxy.yaml"
        conf.write_text(sidecar_yaml(port, sd / "ca", tokenizer_url,
                                     tokenizer_extra=tokenizer_extra,
                                     section_extra=section_extra))
        p = w.proc(name, [bin_path, "serve", "-c", str(conf)], env={**sealed, **(env or {})})
        wait_port(port, p)
        return port, sd / "ca" / "ca.pem"

    w.proxy_port = free_port()
    w.main = sidecar("leak-sidecar", f"http://127.0.0.1:{tport}",
                     tokenizer_extra="    auth_env: PP_TOK_PW\n    fly_src_optin: true\n",
                     section_extra=(f'  proxy_listen: ["127.0.0.1:{w.proxy_port}"]\n'
                                    '  proxy_auth: {password_env: PP_PROXY_PW}\n'),
                     env={"PP_TOK_PW": TOKENIZER_PW, "PP_PROXY_PW": PROXY_PW})
    w.down = sidecar("leak-sidecar-down", f"http://127.0.0.1:{free_port()}",
                     tokenizer_extra="    auth_env: PP_TOK_PW\n", env={"PP_TOK_PW": TOKENIZER_PW})
    hang = Standin(mode="hang").start()
    w.hang = sidecar("leak-sidecar-hang", hang.url, section_extra="  read_timeout: 1s\n",
                     tokenizer_extra="    auth_env: PP_TOK_PW\n", env={"PP_TOK_PW": TOKENIZER_PW})
    dd = d / "dropin"
    dd.mkdir()
    dport = free_port()
    dp = w.proc("leak-dropin", [bin_path, "serve"], cwd=dd, env={
        "TARGETS": "api.github.com=GH_TOKEN", "GH_TOKEN": dropin_sealed, "PORT": str(dport),
        "PROXY": f"http://u:{DROPIN_PW}@127.0.0.1:{tport}"})
    wait_port(dport, dp)
    w.dropin = (dport, dd / "ca.pem")
    w.ca_keys = [d / n / "ca" / "ca-key.pem" for n in
                 ["leak-sidecar", "leak-sidecar-down", "leak-sidecar-hang"]] + [dd / "ca-key.pem"]
    yield w
    for p in w.procs:
        p.stop()
    hang.stop()


def run_session(w):
    port, ca = w.main
    dummy = ["-H", f"Authorization: Bearer {DUMMY}", "-H", f"Proxy-Authorization: {CLIENT_PROXY_AUTH}"]
    # every route, both protocols, a query string
    for proto in ["--http1.1", "--http2"]:
        assert status_of(curl(w, port, f"/user?access_token={QUERY_SECRET}", ca=ca,
                              extra=[proto, *dummy])) == 200
        assert status_of(curl(w, port, "/v1/messages", host="api.anthropic.com", ca=ca, extra=[
            proto, "-H", f"x-api-key: {DUMMY}", "-H", "content-type: application/json",
            "-d", '{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'])) \
            == 200
        assert status_of(curl(w, port, "/v1/chat/completions", host="api.openai.com", ca=ca,
                              extra=[proto, *dummy, "-H", "content-type: application/json",
                                     "-d", '{"model":"m","messages":[]}'])) == 200
        assert status_of(curl(w, port, "/sse?n=3&gap_ms=5", ca=ca, extra=[proto])) == 200
        assert status_of(curl(w, port, "/status/500", ca=ca, extra=[proto, *dummy])) == 500
        assert status_of(curl(w, port, "/user", ca=ca,
                              extra=[proto, "-H", "Host: evil.example.com"])) == 421
        assert status_of(curl(w, port, "/", ca=ca, extra=[proto, "-X", "TRACE", *dummy])) == 405
    # admin answers
    for path in ["/ca-cert.pem", "/healthz", "/metrics", "/nope"]:
        curl(w, port, path, host="localhost", ca=ca)
    # hostile bits on a raw connection: bad host, bare LF, too large
    for raw in [b"GET / HTTP/1.1\r\nHost: api.github.com:1.evil\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: api.github.com\r\nX-A: a\nb\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: api.github.com\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"]:
        import ssl

        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["http/1.1"])
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                             server_hostname="api.github.com") as s:
            s.sendall(raw)
            w.keep(*read_response(s))
    # a client that leaves mid-upload
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                        server_hostname="api.github.com")
    s.sendall(b"POST /up HTTP/1.1\r\nHost: api.github.com\r\nAuthorization: Bearer dummy\r\n"
              b"Content-Length: 100000\r\n\r\n" + b"x" * 1000)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    # the tokenizer down, hanging; the drop-in sidecar with Basic auth
    assert status_of(curl(w, w.down[0], "/user", ca=w.down[1], extra=dummy)) == 502
    assert status_of(curl(w, w.hang[0], "/user", ca=w.hang[1], extra=dummy)) == 504
    assert status_of(curl(w, w.dropin[0], "/user", ca=w.dropin[1], extra=dummy)) == 200
    # the tokenizer directly: wrong password, no password, a bad secret, bad params, other host,
    # a body placeholder, a bad Fly-Src
    sealed_gh = w.secrets["sealed PP_SEALED_GITHUB"]
    assert send_tokenizer(w, w.tport, "api.github.com", {
        "Proxy-Tokenizer": sealed_gh, "Proxy-Authorization": "Bearer wrong-TRACE"}) == 407
    assert send_tokenizer(w, w.tport, "api.github.com", {"Proxy-Tokenizer": sealed_gh}) == 407
    assert send_tokenizer(w, w.tport, "api.github.com", {
        "Proxy-Tokenizer": sealed_gh, "Proxy-Authorization": f"Bearer {TOKENIZER_PW}"}) == 200
    assert send_tokenizer(w, w.tport, "evil.example.com", {
        "Proxy-Tokenizer": sealed_gh, "Proxy-Authorization": f"Bearer {TOKENIZER_PW}"}) == 400
    bad = seal_raw(w.seal_key, json.dumps({"inject_processor": {"token": [BODY_TOKEN]},
                                           "no_auth": {}}))
    w.secrets["sealed bad"] = bad
    assert send_tokenizer(w, w.tport, "api.github.com", {"Proxy-Tokenizer": bad}) == 400
    assert send_tokenizer(w, w.tport, "api.github.com", {
        "Proxy-Tokenizer": f'{sealed_gh}; {{"dst": "Host"}}',
        "Proxy-Authorization": f"Bearer {TOKENIZER_PW}"}) == 400
    assert send_tokenizer(w, w.tport, "api.github.com", {"Proxy-Tokenizer": w.body_sealed},
                          body=b'{"key": "{{ACCESS_TOKEN}}"}') == 200
    assert send_tokenizer(w, w.tport, "api.github.com", {
        "Proxy-Tokenizer": sealed_gh, "Fly-Src": "instance=a;app=b;org=c;ts=1",
        "Fly-Src-Signature": "AAAA"}) == 407
    assert send_tokenizer(w, w.tport, "api.github.com", {
        "Proxy-Tokenizer": "not-base64!!" + sealed_gh[:20]}) == 400
    # the proxy listener: the password right, wrong, missing; routed, unrouted, plain HTTP
    for password, target, want in [(PROXY_PW, "https://api.github.com/user", 200),
                                   ("wrong-" + PROXY_PW[:8], "https://api.github.com/user", 407),
                                   (None, "https://api.github.com/user", 407),
                                   (PROXY_PW, "https://example.com/", 403),
                                   (PROXY_PW, "http://api.github.com/user", 403)]:
        auth = f"agent:{password}@" if password else ""
        r = subprocess.run(["curl", "-sS", "-i", "-v", "--max-time", "20", "--cacert", str(ca),
                            "-x", f"http://{auth}127.0.0.1:{w.proxy_port}", *dummy, target],
                           capture_output=True, timeout=60)
        out = r.stdout.decode("utf-8", "replace")
        # (curl's -v shows the Proxy-Authorization it sent: not kept as something we answered)
        w.seen.append(out)
        assert status_of(out) == want, out
    # the metrics after all that
    w.metrics = curl(w, port, "/metrics", host="localhost", ca=ca)
    time.sleep(0.5)


def test_nothing_secret_in_any_log_response_or_metric(world):
    run_session(world)
    for key in world.ca_keys:
        assert key.exists(), key
        for line in key.read_text().splitlines():
            if not line.startswith("-----") and len(line) >= 16:
                world.secrets[f"CA key {key.parent.name}: {line[:6]}…"] = line
    logs = {p.name: p.output() for p in world.procs}
    assert all(logs.values())
    # The logs are at trace level and cover what happened.
    main = logs["leak-sidecar"]
    assert "status=421" in main and "status=405" in main and "status=200" in main, main[-3000:]
    assert "status=407" in logs["leak-tokenizer"] and "status=400" in logs["leak-tokenizer"]
    assert "status=502" in logs["leak-sidecar-down"]
    assert "status=504" in logs["leak-sidecar-hang"]
    places = {f"log {n}": t for n, t in logs.items()}
    places.update({f"response {i}": t for i, t in enumerate(world.seen)})
    places["metrics"] = world.metrics
    # The client's own query string comes back in the upstream's echo (the API's doing); it must
    # only never be logged.
    client_owned = {"query secret"}
    hits = [(what, where) for what, value in world.secrets.items()
            for where, text in places.items()
            if value in text and not (what in client_owned and where.startswith("response"))]
    assert hits == [], hits
    # the responses did carry what they should (so the search looked at real answers)
    assert any("BEGIN CERTIFICATE" in t for t in world.seen)
    assert "proxypilot_requests_total" in world.metrics
