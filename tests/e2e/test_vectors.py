"""Every case of tests/data/tokenizer-vectors.json (sealed by PyNaCl, independent of our code)
through our real tokenizer binary to the local HTTPS upstream."""

import base64
import http.client
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stack import headers_of, start_tokenizer


@pytest.fixture(scope="module")
def vtok(bin_path, workdir, pki, upstream, vectors):
    """A tokenizer holding the vectors' OPEN_KEY, trusting Fly-Src from loopback."""
    fs = vectors["fly_src"]
    pub = workdir / "fly-src.pub"
    pub.write_text(fs["public_key_hex"] + "\n")
    t = start_tokenizer(
        bin_path, workdir, pki, upstream, name="vector-tokenizer",
        open_key=vectors["open_key_hex"],
        extra=["--use-fly-src", "--fly-src-pubkey", str(pub),
               "--fly-src-trusted-net", "127.0.0.0/8"],
    )
    yield t
    t.proc.stop()


def send(tok, host, path="/vector", headers=None, body=None, method=None):
    """An absolute-form request through the tokenizer, as a forward-proxy client sends it."""
    c = http.client.HTTPConnection("127.0.0.1", tok.port, timeout=20)
    c.request(method or ("POST" if body is not None else "GET"), f"http://{host}{path}",
              body=body, headers=headers or {})
    r = c.getresponse()
    out = (r.status, r.read().decode())
    c.close()
    return out


def case(vectors, name):
    return next(c for c in vectors["cases"] if c["name"] == name)


def seen(upstream, mark):
    got = upstream.wait_since(mark)
    assert len(got) == 1, got
    return got[0]


def test_inject_default(vtok, upstream, vectors):
    c = case(vectors, "inject_default")
    m = upstream.mark()
    status, body = send(vtok, "api.github.com", headers={"Proxy-Tokenizer": c["sealed"]})
    assert status == 200, body
    h = headers_of(seen(upstream, m))
    assert h["authorization"] == [c["expect_header"][1]]
    assert "proxy-tokenizer" not in h


def test_inject_dst_fmt_and_allowed_hosts(vtok, upstream, vectors):
    c = case(vectors, "inject_dst_fmt")
    m = upstream.mark()
    status, body = send(vtok, c["allowed_host"], headers={"Proxy-Tokenizer": c["sealed"]})
    assert status == 200, body
    h = headers_of(seen(upstream, m))
    assert h[c["expect_header"][0].lower()] == [c["expect_header"][1]]
    m = upstream.mark()
    status, body = send(vtok, c["denied_host"], headers={"Proxy-Tokenizer": c["sealed"]})
    assert status == 400 and "not allowed" in body, (status, body)
    assert upstream.since(m) == []


def test_bearer_auth(vtok, upstream, vectors):
    c = case(vectors, "bearer_auth")
    m = upstream.mark()
    status, body = send(vtok, "api.openai.com", headers={
        "Proxy-Tokenizer": c["sealed"], "Proxy-Authorization": c["proxy_authorization_ok"]})
    assert status == 200, body
    h = headers_of(seen(upstream, m))
    assert h["authorization"] == [c["expect_header"][1]]
    assert "proxy-authorization" not in h
    basic = "Basic " + base64.b64encode(b"any:" + vectors["bearer_password"].encode()).decode()
    status, body = send(vtok, "api.openai.com", headers={
        "Proxy-Tokenizer": c["sealed"], "Proxy-Authorization": basic})
    assert status == 200, body
    for bad in [{"Proxy-Authorization": c["proxy_authorization_bad"]}, {}]:
        m = upstream.mark()
        status, body = send(vtok, "api.openai.com", headers={"Proxy-Tokenizer": c["sealed"], **bad})
        assert status == 407, (status, body)
        assert upstream.since(m) == []


def fly_src_headers(vectors, ts=None, **over):
    fs = vectors["fly_src"]
    fields = {"instance": "148e21ea7e1e89", "app": "proxypilot", "org": "personal",
              "ts": str(int(ts if ts is not None else time.time()))}
    fields.update(over)
    value = ";".join(f"{k}={fields[k]}" for k in ["instance", "app", "org", "ts"])
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(fs["private_key_seed_hex"]))
    sig = base64.b64encode(key.sign(value.encode())).decode()
    return {"Fly-Src": value, "Fly-Src-Signature": sig}


def test_fly_src_auth(vtok, upstream, vectors):
    c = case(vectors, "fly_src_auth")
    fs = vectors["fly_src"]
    # The vector's own signature verifies but is old: refused as stale.
    status, body = send(vtok, "api.github.com", headers={
        "Proxy-Tokenizer": c["sealed"], "Fly-Src": fs["fly_src"],
        "Fly-Src-Signature": fs["fly_src_signature"]})
    assert status == 407 and "stale" in body, (status, body)
    m = upstream.mark()
    status, body = send(vtok, "api.github.com",
                        headers={"Proxy-Tokenizer": c["sealed"], **fly_src_headers(vectors)})
    assert status == 200, body
    assert headers_of(seen(upstream, m))["authorization"] == [c["expect_header"][1]]
    # wrong app, wrong org, 31 s old, tampered, missing
    for hdrs in [
        fly_src_headers(vectors, app="other"),
        fly_src_headers(vectors, org="other"),
        fly_src_headers(vectors, ts=time.time() - 31),
        {**fly_src_headers(vectors), "Fly-Src": fly_src_headers(vectors)["Fly-Src"].replace(
            "personal", "persona1")},
        {},
    ]:
        status, body = send(vtok, "api.github.com",
                            headers={"Proxy-Tokenizer": c["sealed"], **hdrs})
        assert status == 407, (hdrs, status, body)


def test_host_pattern(vtok, upstream, vectors):
    c = case(vectors, "host_pattern")
    status, body = send(vtok, c["allowed_host"], headers={"Proxy-Tokenizer": c["sealed"]})
    assert status == 200, body
    status, body = send(vtok, c["denied_host"], headers={"Proxy-Tokenizer": c["sealed"]})
    assert status == 400, (status, body)


def test_allowed_params(vtok, upstream, vectors):
    c = case(vectors, "allowed_params")
    m = upstream.mark()
    hdr = c["sealed"] + "; " + json.dumps(c["params"])
    status, body = send(vtok, "api.github.com", headers={"Proxy-Tokenizer": hdr})
    assert status == 200, body
    h = headers_of(seen(upstream, m))
    assert h[c["expect_header"][0].lower()] == [c["expect_header"][1]]
    bad = c["sealed"] + "; " + json.dumps({"dst": "Other"})
    status, body = send(vtok, "api.github.com", headers={"Proxy-Tokenizer": bad})
    assert status == 400, (status, body)


def test_inject_hmac(vtok, upstream, vectors):
    c = case(vectors, "inject_hmac")
    m = upstream.mark()
    status, body = send(vtok, "api.github.com", headers={"Proxy-Tokenizer": c["sealed"]},
                        body=c["body"].encode())
    assert status == 200, body
    e = seen(upstream, m)
    assert headers_of(e)["authorization"] == [c["expect_header"][1]]
    assert e["body_head"] == c["body"]


def test_inject_body(vtok, upstream, vectors):
    c = case(vectors, "inject_body")
    m = upstream.mark()
    status, body = send(vtok, "api.github.com", headers={"Proxy-Tokenizer": c["sealed"]},
                        body=c["body"].encode())
    assert status == 200, body
    e = seen(upstream, m)
    assert e["body_head"] == c["expect_body"]
    assert e["body_len"] == len(c["expect_body"])


@pytest.mark.parametrize("name", ["two_auths", "two_processors"])
def test_malformed_secrets_refused(vtok, upstream, vectors, name):
    c = case(vectors, name)
    m = upstream.mark()
    status, body = send(vtok, "api.github.com", headers={"Proxy-Tokenizer": c["sealed"]})
    assert status == 400 and "exactly one" in body, (status, body)
    assert upstream.since(m) == []


def test_sealed_to_other_key(vtok, upstream, vectors):
    m = upstream.mark()
    status, body = send(vtok, "api.github.com",
                        headers={"Proxy-Tokenizer": vectors["sealed_to_other_key"]["sealed"]})
    assert status == 400 and "decryption" in body, (status, body)
    assert upstream.since(m) == []


def test_no_secret_refused_and_port_443_refused(vtok, upstream, vectors):
    status, body = send(vtok, "api.github.com")
    assert status == 400 and "Proxy-Tokenizer" in body, (status, body)
    c = case(vectors, "inject_default")
    status, body = send(vtok, "api.github.com:443", headers={"Proxy-Tokenizer": c["sealed"]})
    assert status == 400 and "must be HTTP" in body, (status, body)


def test_origin_form_with_host(vtok, upstream, vectors):
    c = case(vectors, "inject_default")
    m = upstream.mark()
    conn = http.client.HTTPConnection("127.0.0.1", vtok.port, timeout=20)
    conn.putrequest("GET", "/origin-form", skip_host=True)
    conn.putheader("Host", "api.github.com")
    conn.putheader("Proxy-Tokenizer", c["sealed"])
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 200, r.read()
    r.read()
    e = seen(upstream, m)
    assert e["path"] == "/origin-form"
    assert headers_of(e)["host"] == ["api.github.com"]


def test_keep_alive_with_several_requests(vtok, upstream, vectors):
    """Unlike the reference, one client connection carries many requests."""
    c = case(vectors, "inject_default")
    conn = http.client.HTTPConnection("127.0.0.1", vtok.port, timeout=20)
    for i in range(5):
        conn.request("GET", f"http://api.github.com/ka/{i}", headers={"Proxy-Tokenizer": c["sealed"]})
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        assert r.getheader("Connection", "").lower() != "close"
    conn.close()


def test_tokenizer_log_has_no_secrets(vtok, vectors):
    log = vtok.proc.output()
    for c in vectors["cases"]:
        assert c["sealed"] not in log
    for secret in ["ghp_realtoken", "sk-ant-real", "sk-openai-real", "trustno1",
                   "real-body-token", vectors["open_key_hex"]]:
        assert secret not in log, secret
