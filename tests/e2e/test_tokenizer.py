"""Our tokenizer beyond the vectors: SSRF guard, several secrets, Fly-Src trust, fmt/dst
refusals, reference environment variables, batch sealing."""

import base64
import http.client
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stack import headers_of, keygen, run, start_tokenizer


def send(tok, host, path="/t", headers=None, body=None, method=None):
    c = http.client.HTTPConnection("127.0.0.1", tok.port, timeout=20)
    c.request(method or ("POST" if body is not None else "GET"), f"http://{host}{path}",
              body=body, headers=headers or {})
    r = c.getresponse()
    out = (r.status, r.read().decode(), dict((k.lower(), v) for k, v in r.getheaders()))
    c.close()
    return out


def test_ssrf_guard_refuses_loopback_unless_pinned(tokenizer, upstream):
    sealed = tokenizer.seal("t", "--host", "localhost")
    m = upstream.mark()
    status, body, _ = send(tokenizer, "localhost", headers={"Proxy-Tokenizer": sealed})
    assert status == 400 and "loopback" in body, (status, body)
    status, body, _ = send(tokenizer, "127.0.0.1", headers={
        "Proxy-Tokenizer": tokenizer.seal("t", "--host", "127.0.0.1")})
    assert status == 400 and "loopback" in body, (status, body)
    assert upstream.since(m) == []
    # api.github.com is pinned to 127.0.0.1 with --connect-to: the operator's choice is allowed.
    status, body, _ = send(tokenizer, "api.github.com", headers={
        "Proxy-Tokenizer": tokenizer.seal("t", "--host", "api.github.com")})
    assert status == 200, body


def test_several_secrets_all_apply(tokenizer, upstream):
    a = tokenizer.seal("tok-a", "--host", "api.github.com")
    b = tokenizer.seal_json({"inject_processor": {"token": "tok-b", "dst": "X-Second", "fmt": "%s"},
                            "no_auth": {}, "allowed_hosts": ["api.github.com"]})
    m = upstream.mark()
    c = http.client.HTTPConnection("127.0.0.1", tokenizer.port, timeout=20)
    c.putrequest("GET", "http://api.github.com/two")
    c.putheader("Proxy-Tokenizer", a)
    c.putheader("Proxy-Tokenizer", b)
    c.endheaders()
    r = c.getresponse()
    assert r.status == 200, r.read()
    h = headers_of(upstream.wait_since(m)[0])
    assert h["authorization"] == ["Bearer tok-a"] and h["x-second"] == ["tok-b"]
    # one bad secret fails the whole request
    status, _, _ = send(tokenizer, "api.github.com", headers={"Proxy-Tokenizer": a + "x"})
    assert status == 400


def test_proxy_authorization_forms(tokenizer, upstream):
    sealed = run([tokenizer.bin, "seal", "--host", "api.github.com", "--auth-password-env",
                  "PP_PW"], input="t", env={"SEAL_KEY": tokenizer.seal_key,
                                            "PP_PW": "s3cret"}).stdout.strip()
    ok = ["Bearer s3cret", "FlyV1 s3cret", "Basic " + base64.b64encode(b"u:s3cret").decode(),
          "Bearer s3%63ret"]
    for v in ok:
        status, body, _ = send(tokenizer, "api.github.com",
                               headers={"Proxy-Tokenizer": sealed, "Proxy-Authorization": v})
        assert status == 200, (v, body)
    for v in ["Bearer wrong", "Basic " + base64.b64encode(b"u:wrong").decode(), None]:
        hdrs = {"Proxy-Tokenizer": sealed}
        if v:
            hdrs["Proxy-Authorization"] = v
        status, body, _ = send(tokenizer, "api.github.com", headers=hdrs)
        assert status == 407, (v, body)
        assert "s3cret" not in body


@pytest.mark.parametrize("secret,params", [
    ({"inject_processor": {"token": "t"}}, {"fmt": "%d"}),
    ({"inject_processor": {"token": "t"}}, {"fmt": "%s and %s"}),
    ({"inject_processor": {"token": "t"}}, {"fmt": "no directive"}),
    ({"inject_hmac_processor": {"key": "a2V5", "hash": "sha256"}}, {"fmt": "Bearer %s"}),
    ({"inject_processor": {"token": "t", "allowed_dst": ["X-A"]}}, {"dst": "X-B"}),
    ({"inject_processor": {"token": "t", "dst": "X-A"}}, {"dst": "X-B"}),
    ({"inject_processor": {"token": "t", "fmt": "Bearer %s"}}, {"fmt": "Token %s"}),
    ({"inject_processor": {"token": "t", "allowed_fmt": ["Bearer %s"]}}, {"fmt": "Token %s"}),
])
def test_fmt_dst_refusals(tokenizer, upstream, secret, params):
    sealed = tokenizer.seal_json({**secret, "no_auth": {}})
    m = upstream.mark()
    status, body, _ = send(tokenizer, "api.github.com",
                           headers={"Proxy-Tokenizer": f"{sealed}; {json.dumps(params)}"},
                           body=b"{}")
    assert status == 400 and ("bad fmt" in body or "bad dst" in body), (status, body)
    assert upstream.since(m) == []


def fly_headers(seed_hex, ts=None, **over):
    f = {"instance": "m1", "app": "app1", "org": "org1", "ts": str(int(ts or time.time()))}
    f.update(over)
    value = ";".join(f"{k}={f[k]}" for k in ["instance", "app", "org", "ts"])
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
    return {"Fly-Src": value,
            "Fly-Src-Signature": base64.b64encode(key.sign(value.encode())).decode()}


@pytest.fixture(scope="module")
def flysrc_setup(workdir):
    seed = "11" * 32
    pub = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)).public_key().public_bytes_raw()
    path = workdir / "fly-src-test.pub"
    path.write_text(pub.hex())
    return seed, path


def test_fly_src_trust_rules(bin_path, workdir, pki, upstream, flysrc_setup):
    seed, pub = flysrc_setup
    t = start_tokenizer(bin_path, workdir, pki, upstream, name="tok-flysrc", extra=[
        "--use-fly-src", "--fly-src-pubkey", str(pub), "--fly-src-trusted-net", "127.0.0.0/8"])
    untrusted = start_tokenizer(bin_path, workdir, pki, upstream, name="tok-flysrc-untrusted",
                                open_key=t.open_key, extra=[
        "--use-fly-src", "--fly-src-pubkey", str(pub), "--fly-src-trusted-net", "10.0.0.0/8"])
    try:
        sealed = t.seal("tok", "--host", "api.github.com", "--org", "org1", "--app", "app1",
                        "--instance", "m1")
        good = fly_headers(seed)
        status, body, _ = send(t, "api.github.com", headers={"Proxy-Tokenizer": sealed, **good})
        assert status == 200, body
        other_key = fly_headers("22" * 32)
        for hdrs, why in [
            (fly_headers(seed, instance="m2"), "instance"),
            (fly_headers(seed, org="org2"), "org"),
            (fly_headers(seed, app="app2"), "app"),
            (fly_headers(seed, ts=time.time() - 31), "stale"),
            (other_key, "verify"),
        ]:
            status, body, _ = send(t, "api.github.com", headers={"Proxy-Tokenizer": sealed, **hdrs})
            assert status == 407 and why in body, (why, status, body)
        # A valid Fly-Src from a source outside the trusted networks is not trusted.
        status, body, _ = send(untrusted, "api.github.com",
                               headers={"Proxy-Tokenizer": sealed, **fly_headers(seed)})
        assert status == 407 and "untrusted network" in body, (status, body)
    finally:
        t.proc.stop()
        untrusted.proc.stop()


def test_reference_environment(bin_path, workdir, pki, upstream, flysrc_setup):
    """FILTERED_HEADERS, TOKENIZER_HOSTNAMES, OPEN_PROXY and REQUIRE_FLYSRC from the env."""
    from stack import HOSTS, Proc, free_port, wait_port

    seed, pub = flysrc_setup
    open_key, seal_key = keygen(bin_path)
    port = free_port()
    args = [bin_path, "tokenizer", "--upstream-ca", str(pki / "upca.pem"),
            "--fly-src-pubkey", str(pub), "--fly-src-trusted-net", "127.0.0.0/8"]
    for h in HOSTS:
        args += ["--connect-to", f"{h}:443:127.0.0.1:{upstream.port}"]
    p = Proc("tok-env", args, log_dir=workdir, env={
        "OPEN_KEY": open_key, "LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "FILTERED_HEADERS": "X-Internal,X-Debug", "TOKENIZER_HOSTNAMES": "tokenizer.internal",
        "OPEN_PROXY": "true", "REQUIRE_FLYSRC": "1"})
    try:
        wait_port(port, p)

        class T:
            pass

        t = T()
        t.port = port
        # REQUIRE_FLYSRC: nothing passes without a valid Fly-Src.
        status, body, _ = send(t, "api.github.com")
        assert status == 400 and "Fly-Src" in body, (status, body)
        # OPEN_PROXY: no sealed secret needed; FILTERED_HEADERS removed.
        m = upstream.mark()
        status, body, _ = send(t, "api.github.com", headers={
            **fly_headers(seed), "X-Internal": "1", "X-Debug": "1", "X-Kept": "1"})
        assert status == 200, body
        h = headers_of(upstream.wait_since(m)[0])
        assert "x-internal" not in h and "x-debug" not in h and h["x-kept"] == ["1"]
        # TOKENIZER_HOSTNAMES: an origin-form request for itself is circular.
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.putrequest("GET", "/", skip_host=True)
        c.putheader("Host", "tokenizer.internal")
        for k, v in fly_headers(seed).items():
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        assert r.status == 400 and b"circular" in r.read()
    finally:
        p.stop()


def test_close_connections_mode_behaves_like_the_reference(bin_path, workdir, pki, upstream):
    t = start_tokenizer(bin_path, workdir, pki, upstream, name="tok-close",
                        extra=["--close-connections"])
    try:
        status, body, hdrs = send(t, "api.github.com", headers={
            "Proxy-Tokenizer": t.seal("t", "--host", "api.github.com")})
        assert status == 200 and hdrs.get("connection") == "close", hdrs
    finally:
        t.proc.stop()


def test_batch_seal_env_file(bin_path, tmp_path):
    open_key, seal_key = keygen(bin_path)
    f = tmp_path / "targets"
    f.write_text("# name=host[:header]\nGH_TOKEN=api.github.com\n"
                 "export ANTHROPIC_API_KEY=api.anthropic.com:x-api-key\n")
    env = {"SEAL_KEY": seal_key, "GH_TOKEN": "ghp_batch", "ANTHROPIC_API_KEY": "sk-ant-batch"}
    r = run([bin_path, "seal", "--env-file", str(f), "--org", "o", "--app", "a"], env=env)
    assert "ghp_batch" not in r.stdout and "sk-ant-batch" not in r.stdout
    lines = dict(l.split("=", 1) for l in r.stdout.split())
    assert set(lines) == {"GH_TOKEN", "ANTHROPIC_API_KEY"}
    opened = {k: json.loads(run([bin_path, "unseal", "--show-secret"], input=v,
                                env={"OPEN_KEY": open_key}).stdout) for k, v in lines.items()}
    assert opened["GH_TOKEN"]["inject_processor"] == {"token": "ghp_batch"}
    assert opened["GH_TOKEN"]["allowed_hosts"] == ["api.github.com"]
    assert opened["ANTHROPIC_API_KEY"]["inject_processor"] == {
        "token": "sk-ant-batch", "dst": "x-api-key", "fmt": "%s"}
    assert opened["ANTHROPIC_API_KEY"]["fly_src_auth"]["allowed_apps"] == ["a"]
    # a missing variable fails the whole batch and prints nothing
    r = run([bin_path, "seal", "--env-file", str(f)], env={"SEAL_KEY": seal_key,
                                                          "GH_TOKEN": "x"}, check=False)
    assert r.returncode != 0 and r.stdout == "" and "ANTHROPIC_API_KEY" in r.stderr


def test_refusals_say_connection_close(tokenizer, upstream):
    """After an error the tokenizer closes the connection; the answer says so, so that a pooled
    client (the sidecar) never keeps it for the next request."""
    sealed = run([tokenizer.bin, "seal", "--host", "api.github.com", "--auth-password-env",
                  "PP_PW"], input="t", env={"SEAL_KEY": tokenizer.seal_key,
                                            "PP_PW": "s3cret"}).stdout.strip()
    for headers, status in [({}, 400), ({"Proxy-Tokenizer": sealed}, 407),
                            ({"Proxy-Tokenizer": sealed + "x"}, 400)]:
        got, body, h = send(tokenizer, "api.github.com", headers=headers)
        assert got == status, (got, body)
        assert h.get("connection", "").lower() == "close", (status, h)
