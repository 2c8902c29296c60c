"""The proxy (CONNECT) listener, `proxy_listen:`, driven over raw sockets: what it intercepts,
tunnels and refuses, and that none of it can be used to reach a routed host some other way.

Routed hosts on port 443 are intercepted with the minted certificate and pinned to the CONNECT
target (a different SNI or Host gets 421, nothing forwarded); `passthrough:` names are tunnelled
untouched; IP addresses, other ports, unrouted names and plain HTTP are refused with a short
reason. The listener's password, the route rules, the header deadline and the connection cap
apply as on the TLS listener. Real clients through this listener: test_connect_clients.py.
"""

import base64
import re
import socket
import ssl
import time

import pytest

from conftest import PASSTHROUGH_NAME
from stack import (DUMMY, REAL, finish_bio_handshake, free_port, headers_of, read_response,
                   start_sidecar, wait_port)

GH = "api.github.com"


def connect(port, target, headers=(), timeout=5.0):
    """A socket to the proxy listener after `CONNECT target`: (socket, status, headers, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    s.sendall(head.encode())
    status, h, body = read_connect_answer(s)
    return s, status, h, body


def read_connect_answer(s):
    """The proxy's answer to a CONNECT: a 200 has no body; anything else closes."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            return 0, {}, buf
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    h = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    if status != 200:
        while True:
            d = s.recv(4096)
            if not d:
                break
            rest += d
    return status, h, rest


def refused(port, target, headers=()):
    s, status, h, body = connect(port, target, headers)
    s.close()
    return status, h, body.decode()


def tls_in(sock, ca, sni=GH, alpn=("http/1.1",), verify=True):
    ctx = ssl.create_default_context(cafile=str(ca))
    if not verify:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    return ctx.wrap_socket(sock, server_hostname=sni)


def get(tls, path="/repos/o/r", host=GH, method="GET"):
    tls.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {DUMMY}\r\n"
                "\r\n".encode())
    return read_response(tls)


def metric(sidecar, outcome):
    code, _, body, _ = sidecar.curl("/metrics", host="localhost")
    assert code == 200
    m = re.search(r'^proxypilot_connect_total\{outcome="%s"\} (\d+)$' % outcome, body, re.M)
    return int(m.group(1)) if m else 0


def test_a_routed_host_is_intercepted_with_the_real_token(proxied, upstream):
    s, status, _, _ = connect(proxied.port, f"{GH}:443")
    assert status == 200
    tls = tls_in(s, proxied.sidecar.ca)
    assert tls.getpeercert()["subject"] == ((("commonName", GH),),)
    m = upstream.mark()
    for path in ("/repos/o/r", "/user"):  # keep-alive inside the tunnel
        code, _, body = get(tls, path)
        assert code == 200, body
    entries = upstream.wait_since(m, n=2)
    assert [e["path"] for e in entries] == ["/repos/o/r", "/user"]
    for e in entries:
        assert headers_of(e)["authorization"] == [f"Bearer {REAL[GH]}"]
    tls.close()


def test_http2_inside_the_tunnel(proxied, upstream):
    import h2.connection
    import h2.events
    s, status, _, _ = connect(proxied.port, "api.openai.com:443")
    assert status == 200
    tls = tls_in(s, proxied.sidecar.ca, sni="api.openai.com", alpn=("h2", "http/1.1"))
    assert tls.selected_alpn_protocol() == "h2"
    c = h2.connection.H2Connection()
    c.initiate_connection()
    c.send_headers(1, [(":method", "GET"), (":path", "/v1/models"), (":scheme", "https"),
                       (":authority", "api.openai.com"), ("authorization", f"Bearer {DUMMY}")],
                   end_stream=True)
    m = upstream.mark()
    tls.sendall(c.data_to_send())
    status = None
    while status is None:
        for ev in c.receive_data(tls.recv(65536)):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers)[b":status"]
        tls.sendall(c.data_to_send())
    assert status == b"200"
    e = upstream.wait_since(m)[0]
    assert headers_of(e)["authorization"] == [f"Bearer {REAL['api.openai.com']}"]
    tls.close()


def test_a_client_hello_sent_with_the_connect_is_kept(proxied, upstream):
    """Some clients send their first TLS bytes right behind the CONNECT, without waiting for the
    200: they belong to the tunnel, not to the CONNECT request."""
    ctx = ssl.create_default_context(cafile=str(proxied.sidecar.ca))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=GH)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    s = socket.create_connection(("127.0.0.1", proxied.port), timeout=5)
    s.sendall(f"CONNECT {GH}:443 HTTP/1.1\r\nHost: {GH}:443\r\n\r\n".encode() + out.read())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    inc.write(rest)
    finish_bio_handshake(obj, inc, out, s)
    m = upstream.mark()
    obj.write(f"GET /early HTTP/1.1\r\nHost: {GH}\r\nConnection: close\r\n\r\n".encode())
    s.sendall(out.read())
    got = b""
    while b"\r\n\r\n" not in got:
        inc.write(s.recv(65536))
        try:
            got += obj.read(65536)
        except ssl.SSLWantReadError:
            pass
    assert got.startswith(b"HTTP/1.1 200"), got
    assert upstream.wait_since(m)[0]["path"] == "/early"
    s.close()


@pytest.mark.parametrize("sni", ["api.anthropic.com", "localhost", "other.example"])
def test_a_tls_server_name_other_than_the_target_gets_421(proxied, upstream, sni):
    """The CONNECT target fixes the route: a client that names another host in its SNI (one
    the sidecar serves gets that host's certificate, so that it can read the answer) gets 421
    for every request, and nothing is forwarded."""
    m = upstream.mark()
    for host in (GH, sni):  # a refused request closes its connection: one tunnel each
        s, status, _, _ = connect(proxied.port, f"{GH}:443")
        assert status == 200
        tls = tls_in(s, proxied.sidecar.ca, sni=sni, verify=sni == "api.anthropic.com")
        if sni == "api.anthropic.com":
            assert tls.getpeercert()["subject"] == ((("commonName", sni),),)
        code, _, body = get(tls, host=host)
        assert code == 421, body
        assert b"does not match the CONNECT target" in body
        tls.close()
    time.sleep(0.3)
    assert upstream.since(m) == []


def test_a_host_header_other_than_the_target_gets_421(proxied, upstream):
    s, status, _, _ = connect(proxied.port, f"{GH}:443")
    assert status == 200
    tls = tls_in(s, proxied.sidecar.ca)
    m = upstream.mark()
    code, _, body = get(tls, host="api.openai.com")
    assert code == 421 and b"does not match" in body, body
    time.sleep(0.3)
    assert upstream.since(m) == []
    tls.close()


def test_no_sni_is_pinned_to_the_target(proxied, upstream):
    """A client that sends no SNI (the CONNECT already named the host) gets the target's
    certificate, and its Host must still be the target."""
    s, status, _, _ = connect(proxied.port, f"{GH}:443")
    assert status == 200
    ctx = ssl.create_default_context(cafile=str(proxied.sidecar.ca))
    ctx.check_hostname = False
    tls = ctx.wrap_socket(s)  # no server_hostname: no SNI
    assert tls.getpeercert()["subject"] == ((("commonName", GH),),)
    m = upstream.mark()
    code, _, _ = get(tls)
    assert code == 200
    assert headers_of(upstream.wait_since(m)[0])["authorization"] == [f"Bearer {REAL[GH]}"]
    code, _, _ = get(tls, host="api.openai.com")
    assert code == 421
    tls.close()


@pytest.mark.parametrize("target,why", [
    ("example.com:443", "not routed and not in passthrough"),
    ("api.github.com.evil.example:443", "not routed"),
    ("1.2.3.4:443", "IP address"),
    ("127.0.0.1:443", "IP address"),
    ("[::1]:443", "IP address"),
    ("127.1:443", "IP address"),
    ("2130706433:443", "IP address"),
    ("api.github.com:80", "port 443 only"),
    ("api.github.com:8443", "port 443 only"),
    (f"{PASSTHROUGH_NAME}:443", "not in passthrough"),
])
def test_refused_targets_get_403_with_a_reason(proxied, target, why):
    status, h, body = refused(proxied.port, target)
    assert status == 403, (target, body)
    assert why in body, body
    assert h.get("connection") == "close"


@pytest.mark.parametrize("target", ["api.github.com", "api.github.com:", "a b:443",
                                    "user@api.github.com:443", "api.github.com:99999", "/"])
def test_malformed_connect_targets_get_400(proxied, target):
    status, _, body = refused(proxied.port, target)
    assert status == 400, (target, body)


def test_a_routed_name_in_any_spelling_is_intercepted_never_tunnelled(proxied, upstream):
    """Case and a trailing dot do not make a routed host look unrouted."""
    for target in ("API.GitHub.COM:443", "api.github.com.:443"):
        s, status, _, _ = connect(proxied.port, target)
        assert status == 200, target
        tls = tls_in(s, proxied.sidecar.ca)
        assert tls.getpeercert()["subject"] == ((("commonName", GH),),)
        m = upstream.mark()
        assert get(tls)[0] == 200
        assert headers_of(upstream.wait_since(m)[0])["authorization"] == [f"Bearer {REAL[GH]}"]
        tls.close()


@pytest.mark.parametrize("request_line,status,why", [
    (f"GET http://{GH}/user HTTP/1.1", 403, "cleartext"),
    (f"POST http://{GH}:80/user HTTP/1.1", 403, "cleartext"),
    (f"GET https://{GH}/user HTTP/1.1", 403, "cleartext"),
    ("GET http://example.com/ HTTP/1.1", 403, "only HTTPS is proxied"),
    ("GET /user HTTP/1.1", 400, "send CONNECT host:443"),
])
def test_plain_http_requests_are_refused(proxied, upstream, tokenizer, request_line, status, why):
    m = upstream.mark()
    s = socket.create_connection(("127.0.0.1", proxied.port), timeout=5)
    s.sendall(f"{request_line}\r\nHost: {GH}\r\nAuthorization: Bearer {DUMMY}\r\n\r\n".encode())
    got, _, body = read_connect_answer(s)
    s.close()
    assert (got, why in body.decode()) == (status, True), body
    time.sleep(0.2)
    assert upstream.since(m) == []


def test_passthrough_is_tunnelled_untouched(proxied):
    """A passthrough name is dialled by name and tunnelled: the certificate is the mirror's own
    and the request arrives as the client sent it, dummy credential and all."""
    port = proxied.mirror.port
    s, status, _, _ = connect(proxied.port, f"{PASSTHROUGH_NAME}:{port}")
    assert status == 200
    tls = tls_in(s, proxied.mirror_ca, sni=PASSTHROUGH_NAME)
    assert dict(x[0] for x in tls.getpeercert()["issuer"])["commonName"] == "mirror upstream CA"
    m = proxied.mirror.mark()
    code, _, _ = get(tls, path="/simple/", host=f"{PASSTHROUGH_NAME}:{port}")
    assert code == 200
    e = proxied.mirror.wait_since(m)[0]
    assert headers_of(e)["authorization"] == [f"Bearer {DUMMY}"]
    assert "proxy-tokenizer" not in headers_of(e)
    tls.close()


def test_a_passthrough_name_that_does_not_resolve_gets_502(proxied):
    status, _, body = refused(proxied.port, f"nothere.pypi.test:{proxied.mirror.port}")
    assert status == 502 and "cannot reach nothere.pypi.test" in body, body


def test_the_tls_listener_still_refuses_connect(proxied):
    code, _, body, _ = proxied.sidecar.curl(
        "/", extra=["--http1.1", "-X", "CONNECT", "--request-target", f"{GH}:443"])
    assert code in (400, 405), body


def test_outcomes_are_counted(proxied):
    before = {o: metric(proxied.sidecar, o) for o in ("intercepted", "unrouted", "ip")}
    refused(proxied.port, "example.com:443")
    refused(proxied.port, "9.9.9.9:443")
    s, status, _, _ = connect(proxied.port, f"{GH}:443")
    s.close()
    assert metric(proxied.sidecar, "intercepted") == before["intercepted"] + 1
    assert metric(proxied.sidecar, "unrouted") == before["unrouted"] + 1
    assert metric(proxied.sidecar, "ip") == before["ip"] + 1


# --- a listener with a password, route rules, a short header deadline and a connection cap ---

PASSWORD = "pp-proxy-pass-7c1e"
DENY = "DELETE /**"


@pytest.fixture(scope="module")
def locked(bin_path, workdir, tokenizer):
    pport = free_port()
    s = start_sidecar(
        bin_path, workdir, tokenizer, name="proxied-locked",
        section_extra=(f'  proxy_listen: ["127.0.0.1:{pport}"]\n'
                       '  proxy_auth: {password_env: PP_PROXY_PASSWORD}\n'
                       '  client_header_timeout: 1s\n'),
        route_extra={GH: [f'deny: ["{DENY}"]']},
        env_extra={"PP_PROXY_PASSWORD": PASSWORD})
    wait_port(pport, s.proc)
    s.proxy_port = pport
    yield s
    s.proc.stop()


def basic(user, password):
    return ("Proxy-Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode())
            .decode())


@pytest.mark.parametrize("auth", [
    None, basic("agent", "wrong"), basic("agent", PASSWORD[:-1]), ("Proxy-Authorization", PASSWORD),
    ("Proxy-Authorization", f"Bearer {PASSWORD}"), ("Authorization", basic("a", PASSWORD)[1]),
])
def test_without_the_password_the_answer_is_407(locked, auth):
    status, h, body = refused(locked.proxy_port, f"{GH}:443", [auth] if auth else [])
    assert status == 407, body
    assert h["proxy-authenticate"].startswith("Basic")
    # The target is not judged before the password: nothing is learnt about routes.
    status, _, _ = refused(locked.proxy_port, "example.com:443", [auth] if auth else [])
    assert status == 407


def test_with_the_password_and_any_user_name_the_tunnel_opens(locked, upstream):
    for user in ("agent", ""):
        s, status, _, _ = connect(locked.proxy_port, f"{GH}:443", [basic(user, PASSWORD)])
        assert status == 200
        tls = tls_in(s, locked.ca)
        m = upstream.mark()
        assert get(tls)[0] == 200
        e = upstream.wait_since(m)[0]
        h = headers_of(e)
        assert h["authorization"] == [f"Bearer {REAL[GH]}"]
        assert "proxy-authorization" not in h
        tls.close()


def test_the_password_is_never_logged(locked):
    refused(locked.proxy_port, f"{GH}:443", [basic("agent", "wrong-guess-99")])
    s, _, _, _ = connect(locked.proxy_port, "example.com:443", [basic("agent", PASSWORD)])
    s.close()
    time.sleep(0.3)
    out = locked.proc.output()
    for secret in (PASSWORD, "wrong-guess-99", base64.b64encode(f"agent:{PASSWORD}".encode())
                   .decode()):
        assert secret not in out


@pytest.mark.parametrize("listener", ["tls", "proxy"])
def test_route_rules_hold_on_both_listeners(locked, upstream, listener):
    """A denied request gets 403 naming the rule on either listener (allowed ones pass: see
    test_with_the_password_and_any_user_name_the_tunnel_opens)."""
    if listener == "tls":
        tls = locked.tls_socket()
    else:
        s, status, _, _ = connect(locked.proxy_port, f"{GH}:443", [basic("a", PASSWORD)])
        assert status == 200
        tls = tls_in(s, locked.ca)
    m = upstream.mark()
    code, _, body = get(tls, path="/repos/o/r", method="DELETE")
    assert code == 403 and DENY.encode() in body, body
    time.sleep(0.3)
    assert upstream.since(m) == []
    tls.close()


def test_a_slow_connect_header_gets_408(locked):
    s = socket.create_connection(("127.0.0.1", locked.proxy_port), timeout=5)
    s.sendall(f"CONNECT {GH}:443 HTTP/1.1\r\n".encode())
    t = time.monotonic()
    status, _, body = read_connect_answer(s)
    assert status == 408, body
    assert time.monotonic() - t < 4
    s.close()


def test_an_oversized_connect_header_gets_431(locked):
    s = socket.create_connection(("127.0.0.1", locked.proxy_port), timeout=5)
    try:
        s.sendall(f"CONNECT {GH}:443 HTTP/1.1\r\nX-Big: {'a' * 40000}\r\n\r\n".encode())
    except OSError:
        pass
    status, _, body = read_connect_answer(s)
    assert status == 431, body
    s.close()


def test_config_errors_name_the_key(bin_path, workdir, tokenizer):
    from stack import run, sidecar_yaml
    d = workdir / "proxied-bad"
    d.mkdir(exist_ok=True)
    for extra, key, problem in [
        ('  passthrough: ["*.pypi.org"]\n', "proxypilot.passthrough", "only with proxy_listen"),
        ('  proxy_listen: 3128\n  passthrough: ["10.0.0.1"]\n', "proxypilot.passthrough[0]",
         "IP"),
        ('  proxy_listen: 3128\n  passthrough: ["localhost"]\n', "proxypilot.passthrough[0]",
         "localhost"),
        ('  proxy_listen: 3128\n  proxy_auth: {password_env: PP_NOT_SET_ANYWHERE}\n',
         "proxypilot.proxy_auth", "PP_NOT_SET_ANYWHERE is not set"),
        ('  proxy_listen: ["nonsense"]\n', "proxypilot.proxy_listen[0]", "not an address"),
        ('  proxy_listen: 0\n', "proxypilot.proxy_listen", "port 0"),
    ]:
        conf = d / "proxy.yaml"
        conf.write_text(sidecar_yaml(free_port(), d / "ca", tokenizer.url, section_extra=extra))
        r = run([bin_path, "serve", "-c", str(conf), "-t"], check=False,
                env={"PP_SEALED_GITHUB": "x" * 80, "PP_SEALED_ANTHROPIC": "x" * 80,
                     "PP_SEALED_OPENAI": "x" * 80})
        assert r.returncode != 0, extra
        assert f"{conf}: {key}: " in r.stderr and problem in r.stderr, r.stderr
