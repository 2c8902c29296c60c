"""The trust boundary, asserted where each promise is kept.

The sidecar's promises are checked at the sidecar's own output: a recording stand-in sits where
the tokenizer would be, so the tokenizer's own clean-up cannot hide a sidecar that forwards a
dummy credential or a client's Proxy-* header. The tokenizer's promises are checked at its
output: a recording TLS stand-in sits where the upstream API would be. Each test here fails on
the code before the hardening issue's fixes.
"""

# How long to let bytes that should not exist (a stray terminator, a refused dial) show up
# before asserting their absence: absence cannot be polled for.
SETTLE = 0.3

import base64
import http.client
import json
import subprocess
import time

import pytest

from stack import DUMMY, REAL, Proc, free_port, run, start_sidecar, wait_port
from standin import Standin


def clean(conn):
    """Every byte a connection carried belonged to exactly one request."""
    return bytes(conn.raw) == b"".join(r.raw for r in conn.requests) and not conn.stray


@pytest.fixture(scope="module")
def recorder():
    s = Standin().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def rec_sidecar(bin_path, workdir, tokenizer, recorder):
    """A sidecar whose tokenizer is the recording stand-in (routes sealed for `tokenizer`)."""
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-rec", tokenizer_url=recorder.url)
    yield s
    s.proc.stop()


CLIENT_HEADERS = [
    ("Authorization", f"Bearer {DUMMY}"),
    ("X-Api-Key", DUMMY),
    ("Proxy-Authorization", "Basic " + base64.b64encode(b"agent:guess").decode()),
    ("Proxy-Tokenizer", "c3RvbGVuLWJsb2ItZnJvbS10aGUtc2hlbGw="),
    ("Fly-Src", "instance=x;app=y;org=z;ts=1"),
    ("Fly-Src-Signature", "c2ln"),
    ("X-Keep", "kept"),
]


@pytest.mark.parametrize("proto", ["--http1.1", "--http2"])
def test_sidecar_output_is_exactly_the_routed_request(rec_sidecar, recorder, proto):
    recorder.clear()
    hdrs = [a for k, v in CLIENT_HEADERS for a in ("-H", f"{k}: {v}")]
    code, _, body, _ = rec_sidecar.curl("/repos/o/r/issues?state=open&per_page=5",
                                        extra=[proto, *hdrs])
    assert code == 200, body
    (req,) = recorder.wait_requests(1)
    assert req.line == "GET http://api.github.com/repos/o/r/issues?state=open&per_page=5 HTTP/1.1"
    assert req.all("host") == ["api.github.com"]
    assert req.all("proxy-tokenizer") == [rec_sidecar.env["PP_SEALED_GITHUB"]]
    for dropped in ["authorization", "x-api-key", "proxy-authorization", "fly-src",
                    "fly-src-signature", "fly-src-optin"]:
        assert req.all(dropped) == [], (dropped, req.headers)
    assert req.all("x-keep") == ["kept"]
    assert DUMMY not in req.raw.decode("latin-1").replace("dummy-", "")
    assert "guess" not in req.raw.decode("latin-1")


@pytest.mark.parametrize("request_head", [
    # an absolute-form target naming the SNI's host
    b"GET https://api.github.com/a/b?c=d HTTP/1.1\r\nHost: api.github.com\r\n",
    # a Host in another case, with a trailing dot and a port
    b"GET /a/b?c=d HTTP/1.1\r\nHost: API.GitHub.COM.:8443\r\n",
])
def test_sidecar_rebuilds_host_and_target_from_the_route(rec_sidecar, recorder, request_head):
    """What goes out is rebuilt from the route, not copied from the client."""
    recorder.clear()
    with rec_sidecar.tls_socket() as s:
        s.sendall(request_head + b"Connection: close\r\n\r\n")
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 200"), data
    (req,) = recorder.wait_requests(1)
    assert req.line == "GET http://api.github.com/a/b?c=d HTTP/1.1"
    assert req.all("host") == ["api.github.com"]


def test_per_route_strip_headers_are_dropped(bin_path, workdir, tokenizer, recorder):
    extra = ("    - host: example.test\n      secret_env: PP_SEALED_GITHUB\n"
             "      strip_headers: [X-Goog-Api-Key]\n")
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-rec-strip",
                      tokenizer_url=recorder.url, yaml_extra=extra)
    try:
        recorder.clear()
        code, _, body, _ = s.curl("/", host="example.test", extra=[
            "-H", "X-Goog-Api-Key: dummy-goog", "-H", "X-Api-Key: dummy-x"])
        assert code == 200, body
        (req,) = recorder.wait_requests(1)
        assert req.all("x-goog-api-key") == [] and req.all("x-api-key") == []
        assert req.all("host") == ["example.test"]
    finally:
        s.proc.stop()


def test_tokenizer_auth_and_fly_src_optin_come_only_from_the_sidecar(bin_path, workdir, tokenizer,
                                                                    recorder):
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-rec-auth",
                      tokenizer_url=recorder.url,
                      tokenizer_extra="    auth_env: PP_TOK_PW\n    fly_src_optin: true\n",
                      env_extra={"PP_TOK_PW": "tokenizer-password"})
    try:
        recorder.clear()
        code, _, body, _ = s.curl("/user", extra=[
            "-H", "Proxy-Authorization: Bearer from-the-shell", "-H", "Fly-Src-Optin: nope"])
        assert code == 200, body
        (req,) = recorder.wait_requests(1)
        assert req.all("proxy-authorization") == ["Bearer tokenizer-password"]
        assert req.all("fly-src-optin") == ["*"]
    finally:
        s.proc.stop()


def test_dropin_sends_fly_src_optin_and_basic_auth_from_proxy_url(bin_path, workdir, tokenizer,
                                                                  recorder):
    """As tlsproxy: PROXY=http://user:password@host gives Proxy-Authorization: Basic, and every
    request carries Fly-Src-Optin: * (so tokenizer.fly.io can check fly_src_auth)."""
    d = workdir / "dropin-rec"
    d.mkdir()
    port = free_port()
    env = {
        "TARGETS": "api.github.com=GH_TOKEN",
        "GH_TOKEN": tokenizer.seal(REAL["api.github.com"], "--host", "api.github.com"),
        "PROXY": f"http://tok%40user:p%3Ass@127.0.0.1:{recorder.port}",
        "PORT": str(port),
    }
    p = Proc("dropin-rec", [bin_path, "serve"], env=env, cwd=d, log_dir=workdir)
    try:
        wait_port(port, p)
        recorder.clear()
        r = run(["curl", "-sS", "--resolve", f"api.github.com:{port}:127.0.0.1", "--cacert",
                 str(d / "ca.pem"), "-H", "Proxy-Authorization: Bearer shell",
                 "-w", "\n%{http_code}", f"https://api.github.com:{port}/user"])
        assert r.stdout.endswith("\n200"), r.stdout
        (req,) = recorder.wait_requests(1)
        assert req.all("proxy-authorization") == [
            "Basic " + base64.b64encode(b"tok@user:p:ss").decode()]
        assert req.all("fly-src-optin") == ["*"]
        assert "p:ss" not in p.output() and "p%3Ass" not in p.output()
    finally:
        p.stop()


def test_dropin_password_works_with_a_bearer_auth_tokenizer(bin_path, workdir, tokenizer, upstream):
    d = workdir / "dropin-pw"
    d.mkdir()
    port = free_port()
    sealed = run([tokenizer.bin, "seal", "--host", "api.github.com", "--auth-password-env",
                  "PW"], input=REAL["api.github.com"],
                 env={"SEAL_KEY": tokenizer.seal_key, "PW": "s3cret"}).stdout.strip()
    env = {"TARGETS": "api.github.com=GH_TOKEN", "GH_TOKEN": sealed,
           "PROXY": f"http://anyone:s3cret@127.0.0.1:{tokenizer.port}", "PORT": str(port)}
    p = Proc("dropin-pw", [bin_path, "serve"], env=env, cwd=d, log_dir=workdir)
    try:
        wait_port(port, p)
        m = upstream.mark()
        r = run(["curl", "-sS", "--resolve", f"api.github.com:{port}:127.0.0.1", "--cacert",
                 str(d / "ca.pem"), "-w", "\n%{http_code}", f"https://api.github.com:{port}/user"])
        assert r.stdout.endswith("\n200"), r.stdout
        e = upstream.wait_since(m)[0]
        assert dict((k.lower(), v) for k, v in e["headers"])["authorization"] == \
            f"Bearer {REAL['api.github.com']}"
    finally:
        p.stop()


# ---------- one request's bytes, and only those, on a pooled connection ----------

def _upload(sidecar, proto, data, extra=(), path="/upload"):
    args = ["curl", "-sS", "--max-time", "20", *sidecar.resolve_args(), proto, "-T", "-",
            "-X", "POST", *extra, "-w", "\n%{http_code}",
            f"https://api.github.com:{sidecar.port}{path}"]
    r = subprocess.run(args, input=data, capture_output=True, timeout=30)
    return r.stdout.decode(errors="replace")


@pytest.mark.parametrize("proto", ["--http2", "--http1.1"])
@pytest.mark.parametrize("data", [b"", b"hello body"], ids=["empty", "nonempty"])
def test_streamed_body_has_exactly_one_terminator(rec_sidecar, recorder, proto, data):
    """A body of unknown length goes to the tokenizer chunked; it must end with exactly one
    0\\r\\n\\r\\n. A second one would sit on the pooled connection as the start of the next
    request. curl -T - streams stdin (HTTP/2: DATA frames, the last one empty with END_STREAM)."""
    reqs = _upload_then_another(rec_sidecar, recorder, proto, data, "/upload")
    assert reqs[0].body == data and reqs[0].chunked


def _upload_then_another(s, recorder, proto, data, path):
    """Upload `data` to `path`, then a second request, which lands on the pooled connection
    and shows whether stray bytes were left on it: both reach the recorder in order, and every
    byte of every connection belongs to one request. Returns the recorded requests."""
    recorder.clear()
    out = _upload(s, proto, data, path=path)
    assert out.endswith("\n200"), out
    time.sleep(SETTLE)
    code, _, body, _ = s.curl("/after", extra=["--http1.1"])
    assert code == 200, body
    reqs = recorder.wait_requests(2)
    time.sleep(SETTLE)
    assert [r.target.rsplit("/", 1)[1] for r in reqs] == [path.lstrip("/"), "after"], reqs
    for c in recorder.conns:
        assert clean(c), (bytes(c.raw)[-200:], bytes(c.stray))
    return reqs


@pytest.fixture(scope="module")
def rec_gql_sidecar(bin_path, workdir, tokenizer, recorder):
    """The recording stand-in behind a route whose GraphQL rule makes the sidecar read the
    whole body before forwarding it (pingora replays it from its retry buffer)."""
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-rec-gql",
                      tokenizer_url=recorder.url,
                      route_extra={"api.github.com": ['allow: ["POST /graphql query", "GET /**"]']})
    yield s
    s.proc.stop()


@pytest.mark.parametrize("proto", ["--http2", "--http1.1"])
def test_a_body_read_for_graphql_rules_is_forwarded_once_and_whole(rec_gql_sidecar, recorder,
                                                                   proto):
    data = b'{"query": "query { viewer { login } }"}'
    reqs = _upload_then_another(rec_gql_sidecar, recorder, proto, data, "/graphql")
    assert reqs[0].body == data


def test_empty_content_length_post_is_clean(rec_sidecar, recorder):
    recorder.clear()
    for proto in ["--http2", "--http1.1"]:
        code, _, body, _ = rec_sidecar.curl("/empty", extra=[proto, "-X", "POST", "-d", ""])
        assert code == 200, body
    time.sleep(SETTLE)
    assert len(recorder.wait_requests(2)) == 2
    for c in recorder.conns:
        assert clean(c), bytes(c.raw)


@pytest.fixture(scope="module")
def tls_recorder(pki):
    s = Standin(tls=(str(pki / "up.pem"), str(pki / "up.key"))).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def rec_tokenizer(bin_path, workdir, pki, upstream, tls_recorder):
    """A tokenizer whose upstream for every host is the recording TLS stand-in."""
    port = free_port()
    from stack import keygen

    open_key, seal_key = keygen(bin_path)
    args = [bin_path, "tokenizer", "--listen", f"127.0.0.1:{port}", "--upstream-ca",
            str(pki / "upca.pem"), "--connect-to", f"::127.0.0.1:{tls_recorder.port}"]
    p = Proc("tokenizer-rec", args, env={"OPEN_KEY": open_key}, log_dir=workdir)
    wait_port(port, p)

    class T:
        pass

    t = T()
    t.proc, t.port, t.url, t.seal_key, t.bin = p, port, f"http://127.0.0.1:{port}", seal_key, \
        bin_path
    t.seal_json = lambda obj: run([bin_path, "seal", "--json-file", "-"], input=json.dumps(obj),
                                  env={"SEAL_KEY": seal_key}).stdout.strip()
    yield t
    p.stop()


def _raw_to_tokenizer(tok, head, body_bytes=b""):
    import socket

    with socket.create_connection(("127.0.0.1", tok.port), timeout=10) as s:
        s.sendall(head + body_bytes)
        from stack import read_response

        return read_response(s)


@pytest.mark.parametrize("processor", ["inject_body_processor", "inject_processor"])
@pytest.mark.parametrize("chunks", [b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n",
                                    b"0\r\n\r\n".join([b"3\r\n{{A\r\n"]) + b"0\r\n\r\n"],
                         ids=["empty", "one-chunk", "partial-placeholder"])
def test_tokenizer_writes_exactly_one_terminator(rec_tokenizer, tls_recorder, processor, chunks):
    secret = {processor: {"token": "tok-X"}, "no_auth": {}, "allowed_hosts": ["api.github.com"]}
    sealed = rec_tokenizer.seal_json(secret)
    tls_recorder.clear()
    head = (f"POST http://api.github.com/up HTTP/1.1\r\nHost: api.github.com\r\n"
            f"Proxy-Tokenizer: {sealed}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    status, _, body = _raw_to_tokenizer(rec_tokenizer, head, chunks)
    assert status == 200, body
    # and one more request, to the same pooled upstream connection
    status, _, body = _raw_to_tokenizer(
        rec_tokenizer, (f"GET http://api.github.com/after HTTP/1.1\r\nHost: api.github.com\r\n"
                        f"Proxy-Tokenizer: {sealed}\r\nContent-Length: 0\r\n\r\n").encode())
    assert status == 200, body
    time.sleep(SETTLE)
    reqs = tls_recorder.wait_requests(2)
    assert [r.target for r in reqs] == ["/up", "/after"], reqs
    for c in tls_recorder.conns:
        assert clean(c), (bytes(c.raw)[-200:], bytes(c.stray))


def test_tokenizer_output_has_no_tokenizer_headers(rec_tokenizer, tls_recorder):
    sealed = rec_tokenizer.seal_json({"inject_processor": {"token": "tok-Y", "dst": "X-Key",
                                                           "fmt": "%s"},
                                      "no_auth": {}, "allowed_hosts": ["api.github.com"]})
    tls_recorder.clear()
    status, _, body = _raw_to_tokenizer(rec_tokenizer, (
        f"GET http://api.github.com:80/x HTTP/1.1\r\nHost: api.github.com:80\r\n"
        f"Proxy-Tokenizer: {sealed}\r\nProxy-Authorization: Bearer pw\r\nX-Key: client-value\r\n"
        f"Content-Length: 0\r\n\r\n").encode())
    assert status == 200, body
    (req,) = tls_recorder.wait_requests(1)
    assert req.line == "GET /x HTTP/1.1"
    assert req.all("host") == ["api.github.com"]
    assert req.all("x-key") == ["tok-Y"]
    assert req.all("proxy-tokenizer") == [] and req.all("proxy-authorization") == []


# ---------- the host the tokenizer validates is the host it dials ----------

BOGUS_AUTHORITIES = [
    "attacker.example:1.github.com",
    "attacker.example:443.github.com",
    "attacker.example:80.api.github.com",
    "attacker.example:x.github.com",
    "attacker.example:.github.com",
    "attacker.example:99999.github.com",
    "attacker.example:-1.github.com",
    "u@attacker.example:1.github.com",
    "attacker.example%3a1.github.com",
]


@pytest.fixture(scope="module")
def attacker(pki):
    # Serves TLS for api.github.com (the test certificate), so a dial that reached it would
    # complete and the real token would arrive: any request it records is a leak.
    s = Standin(tls=(str(pki / "up.pem"), str(pki / "up.key"))).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def pattern_tokenizer(bin_path, workdir, pki, attacker):
    """Every dial, whatever host and port, goes to the attacker stand-in."""
    from stack import keygen

    open_key, seal_key = keygen(bin_path)
    port = free_port()
    p = Proc("tokenizer-pattern", [bin_path, "tokenizer", "--listen", f"127.0.0.1:{port}",
                                   "--upstream-ca", str(pki / "upca.pem"),
                                   "--connect-to", f"::127.0.0.1:{attacker.port}"],
             env={"OPEN_KEY": open_key}, log_dir=workdir)
    wait_port(port, p)
    sealed = run([bin_path, "seal", "--json-file", "-"], env={"SEAL_KEY": seal_key},
                 input=json.dumps({"inject_processor": {"token": "ghp_PATTERN_REAL_TOKEN"},
                                   "no_auth": {},
                                   "allowed_host_pattern": r".*\.github\.com$"})).stdout.strip()
    yield port, sealed
    p.stop()


@pytest.mark.parametrize("authority", BOGUS_AUTHORITIES)
@pytest.mark.parametrize("form", ["origin", "absolute"])
def test_pattern_secret_never_reaches_another_host(pattern_tokenizer, attacker, authority, form):
    port, sealed = pattern_tokenizer
    attacker.clear()
    target = "/" if form == "origin" else f"http://{authority}/"
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nProxy-Tokenizer: {sealed}\r\n"
                  f"Content-Length: 0\r\n\r\n".encode())
        from stack import read_response

        status, _, body = read_response(s)
    assert status == 400, (status, body)
    time.sleep(SETTLE)
    assert attacker.accepted == 0 and attacker.requests() == [], \
        "the tokenizer dialled out for a refused host"


def test_pattern_secret_positive_control(pattern_tokenizer, attacker):
    """The same set-up delivers the token when the host is allowed: the refusals above are real."""
    port, sealed = pattern_tokenizer
    attacker.clear()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "http://api.github.com/ok", headers={"Proxy-Tokenizer": sealed})
    r = c.getresponse()
    assert r.status == 200, r.read()
    (req,) = attacker.wait_requests(1)
    assert req.all("authorization") == ["Bearer ghp_PATTERN_REAL_TOKEN"]


# ---------- what a malformed secret, a bad param or a stray option cannot do ----------

def _send(tok_port, host, headers, path="/t"):
    c = http.client.HTTPConnection("127.0.0.1", tok_port, timeout=20)
    c.request("GET", f"http://{host}{path}", headers=headers)
    r = c.getresponse()
    out = (r.status, r.read().decode())
    c.close()
    return out


MALFORMED = [
    '{"inject_processor":{"token":"t","allowed_dst":"LEAKMARK-1"},"no_auth":{}}',
    '{"inject_processor":{"token":["LEAKMARK-2"]},"no_auth":{}}',
    '{"inject_processor":{"token":"t"},"no_auth":{},"allowed_hosts":"LEAKMARK-3"}',
    '{"bearer_auth":{"digest":"LEAKMARK-4!!"},"inject_processor":{"token":"t"}}',
    '{"inject_hmac_processor":{"key":"a2V5","hash":"LEAKMARK-5"},"no_auth":{}}',
    '{"inject_processor":{"token":"t"},"no_auth":{},"allowed_host_pattern":"(LEAKMARK-6"}',
    'LEAKMARK-7 is not json',
    '{"inject_processor":{"token":"t","fmt":"LEAKMARK-8 %d"},"no_auth":{}}',
    '{"inject_processor":{"token":"t"},"fly_src_auth":{"allowed_orgs":"LEAKMARK-9"}}',
    '{"inject_processor":{"token":12345678901234567890},"no_auth":{}}',
]


@pytest.mark.parametrize("secret", MALFORMED)
def test_malformed_secret_values_are_never_echoed(tokenizer, upstream, secret):
    sealed = tokenizer.seal_raw(secret)
    m = upstream.mark()
    status, body = _send(tokenizer.port, "api.github.com", {"Proxy-Tokenizer": sealed})
    assert status == 400, body
    for marker in ["LEAKMARK", "12345678901234567890"]:
        assert marker not in body, body
        assert marker not in tokenizer.proc.output()
    assert upstream.since(m) == []


@pytest.mark.parametrize("dst", ["Host", "Content-Length", "Transfer-Encoding", "Connection",
                                 "Proxy-Authorization", "Proxy-Tokenizer", "Upgrade", "TE"])
def test_request_params_cannot_aim_the_token_at_routing_headers(tokenizer, upstream, dst):
    sealed = tokenizer.seal_json({"inject_processor": {"token": "ghp_PARAM_REAL"}, "no_auth": {},
                                  "allowed_hosts": ["api.github.com"]})
    m = upstream.mark()
    status, body = _send(tokenizer.port, "api.github.com",
                         {"Proxy-Tokenizer": f'{sealed}; {json.dumps({"dst": dst})}'})
    assert status == 400 and "bad dst" in body, (status, body)
    assert upstream.since(m) == []


def test_empty_allowed_lists_allow_nothing(tokenizer, upstream):
    for proc in [{"token": "t", "allowed_dst": []}, {"token": "t", "allowed_fmt": []}]:
        sealed = tokenizer.seal_raw(json.dumps({"inject_processor": proc, "no_auth": {},
                                                "allowed_hosts": ["api.github.com"]}))
        m = upstream.mark()
        status, body = _send(tokenizer.port, "api.github.com", {"Proxy-Tokenizer": sealed})
        assert status == 400 and ("bad dst" in body or "bad fmt" in body), (proc, status, body)
        assert upstream.since(m) == []


def test_unknown_processors_are_refused_not_ignored(tokenizer, upstream):
    for extra in [{"github_app_processor": {"private_key": "LS0t", "app_id": "1"}},
                  {"some_new_processor": {"x": 1}}]:
        secret = {"inject_processor": {"token": "ghp_SHOULD_NOT_GO"}, "no_auth": {},
                  "allowed_hosts": ["api.github.com"], **extra}
        m = upstream.mark()
        status, body = _send(tokenizer.port, "api.github.com",
                             {"Proxy-Tokenizer": tokenizer.seal_raw(json.dumps(secret))})
        assert status == 400 and "not supported" in body, (status, body)
        assert upstream.since(m) == []


@pytest.mark.parametrize("value,open_proxy", [("disabled", False), ("yes", False), ("0", False),
                                               ("false", False), ("true", True), ("1", True)])
def test_open_proxy_reads_booleans_like_go(bin_path, workdir, pki, upstream, value, open_proxy):
    from stack import keygen

    open_key, _ = keygen(bin_path)
    port = free_port()
    args = [bin_path, "tokenizer", "--listen", f"127.0.0.1:{port}", "--upstream-ca",
            str(pki / "upca.pem"), "--connect-to", f"api.github.com:443:127.0.0.1:{upstream.port}"]
    p = Proc(f"tok-open-{value}", args, env={"OPEN_KEY": open_key, "OPEN_PROXY": value},
             log_dir=workdir)
    try:
        wait_port(port, p)
        status, body = _send(port, "api.github.com", {})
        assert (status == 200) == open_proxy, (value, status, body)
        if not open_proxy:
            assert status == 400 and "not an open proxy" in body, body
    finally:
        p.stop()


@pytest.mark.parametrize("literal", ["[64:ff9b::7f00:1]", "[::127.0.0.1]", "[2002:7f00:1::1]",
                                     "198.18.0.1", "240.0.0.1", "192.0.0.8",
                                     "[::ffff:169.254.169.254]"])
def test_ssrf_guard_refuses_translated_and_reserved_addresses(tokenizer, literal):
    sealed = tokenizer.seal_json({"inject_processor": {"token": "t"}, "no_auth": {}})
    status, body = _send(tokenizer.port, literal, {"Proxy-Tokenizer": sealed})
    assert status == 400 and "denied" in body, (literal, status, body)


# ---------- the CA ----------

def test_ca_excludes_every_ip_address(sidecar):
    r = run(["openssl", "x509", "-in", str(sidecar.ca), "-noout", "-text"])
    assert "Excluded:" in r.stdout, r.stdout
    assert "IP:0.0.0.0/0.0.0.0" in r.stdout and "IP:0:0:0:0:0:0:0:0/0:0:0:0:0:0:0:0" in r.stdout


def test_ca_key_open_to_others_is_refused(bin_path, workdir, tokenizer):
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-keymode")
    s.proc.stop()
    key = s.ca.parent / "ca-key.pem"
    key.chmod(0o644)
    conf = s.workdir / "proxy.yaml"
    r = run([bin_path, "serve", "-c", str(conf)], env=s.env, check=False)
    assert r.returncode != 0
    assert "chmod 600" in r.stderr and str(key) in r.stderr, r.stderr
    key.chmod(0o600)


def test_sidecars_starting_at_once_share_one_matching_ca(bin_path, workdir, tokenizer):
    """Four sidecars sharing a CA directory start together: one creates the CA, the others load
    it; the key on disk belongs to the certificate on disk."""
    base = workdir / "ca-race"
    base.mkdir()
    procs = []
    try:
        for i in range(4):
            port = free_port()
            conf = base / f"p{i}.yaml"
            conf.write_text(f"""\
version: 1
threads: 1
proxypilot:
  listen: ["127.0.0.1:{port}"]
  ca: {{cert: {base}/ca/ca.pem, key: {base}/ca/ca-key.pem}}
  tokenizer: {{url: {tokenizer.url}}}
  routes:
    - host: api.github.com
      secret_env: PP_SEALED_GITHUB
""")
            procs.append((port, Proc(f"ca-race-{i}", [bin_path, "serve", "-c", str(conf)],
                                     env={"PP_SEALED_GITHUB": tokenizer.seal("t")},
                                     log_dir=workdir)))
        for port, p in procs:
            wait_port(port, p)
        cert_pub = run(["openssl", "x509", "-in", str(base / "ca/ca.pem"), "-noout", "-pubkey"])
        key_pub = run(["openssl", "pkey", "-in", str(base / "ca/ca-key.pem"), "-pubout"])
        assert cert_pub.stdout == key_pub.stdout
        created = sum("created CA" in p.output() for _, p in procs)
        assert created == 1, [p.output() for _, p in procs]
    finally:
        for _, p in procs:
            p.stop()


def test_tokenizer_never_sends_a_post_to_the_api_twice(rec_tokenizer, tls_recorder):
    """A pooled upstream connection that breaks under a POST: the client gets an error, and the
    API saw the POST once (it may have acted on it), never a retry."""
    sealed = rec_tokenizer.seal_json({"inject_processor": {"token": "tok-Z"}, "no_auth": {},
                                      "allowed_hosts": ["api.github.com"]})
    c = http.client.HTTPConnection("127.0.0.1", rec_tokenizer.port, timeout=20)
    c.request("GET", "http://api.github.com/warm", headers={"Proxy-Tokenizer": sealed})
    r = c.getresponse()
    assert r.status == 200, r.read()
    r.read()
    tls_recorder.clear()
    tls_recorder.mode = "reset_before"
    try:
        c.request("POST", "http://api.github.com/charge", body=b'{"amount": 42}',
                  headers={"Proxy-Tokenizer": sealed, "Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 502, r.read()
        time.sleep(0.5)
        posts = [q for q in tls_recorder.requests() if q.method == "POST"]
        assert len(posts) == 1, posts
    finally:
        tls_recorder.mode = "ok"
        c.close()


def test_tokenizer_marks_an_upstream_stall_mid_body_as_truncated(bin_path, workdir, pki,
                                                                 tls_recorder):
    """The API goes quiet after two events: the tokenizer must end the connection without the
    chunked terminator (the response is broken), never append its error text and finish."""
    from stack import keygen

    open_key, seal_key = keygen(bin_path)
    port = free_port()
    p = Proc("tokenizer-stall", [bin_path, "tokenizer", "--listen", f"127.0.0.1:{port}",
                                 "--upstream-ca", str(pki / "upca.pem"), "--read-timeout", "1s",
                                 "--connect-to", f"::127.0.0.1:{tls_recorder.port}"],
             env={"OPEN_KEY": open_key}, log_dir=workdir)
    try:
        wait_port(port, p)
        sealed = run([bin_path, "seal", "--json-file", "-"], env={"SEAL_KEY": seal_key},
                     input=json.dumps({"inject_processor": {"token": "t"}, "no_auth": {},
                                       "allowed_hosts": ["api.github.com"]})).stdout.strip()
        tls_recorder.mode = "sse_stall"
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"GET http://api.github.com/events HTTP/1.1\r\nHost: api.github.com\r\n"
                      f"Proxy-Tokenizer: {sealed}\r\n\r\n".encode())
            raw = b""
            t0 = time.time()
            while time.time() - t0 < 8:
                d = s.recv(65536)
                if not d:
                    break
                raw += d
        assert raw.startswith(b"HTTP/1.1 200"), raw
        assert b"data: 1" in raw and b"timed out" not in raw, raw
        assert not raw.endswith(b"0\r\n\r\n"), raw
        assert time.time() - t0 < 5
    finally:
        tls_recorder.mode = "ok"
        p.stop()
