"""The whole path with the real binary: curl -> sidecar (TLS, minted cert) -> tokenizer -> upstream."""

import http.client
import json
import socket
import ssl
import time

import pytest

from stack import DUMMY, REAL, Proc, free_port, headers_of, run, wait_port


def assert_real_not_dummy(entry, host="api.github.com", header="authorization", fmt="Bearer {}"):
    h = headers_of(entry)
    assert h.get(header) == [fmt.format(REAL[host])], h
    flat = str(entry["headers"])
    assert DUMMY not in flat.replace("dummy-free", "")
    assert "proxy-tokenizer" not in h and "proxy-authorization" not in h


def test_curl_round_trip_http1(sidecar, upstream):
    m = upstream.mark()
    code, version, body, _ = sidecar.curl(
        "/user?page=2", extra=["--http1.1", "-H", f"Authorization: Bearer {DUMMY}"])
    assert (code, version) == (200, "1.1"), body
    e = upstream.wait_since(m)[0]
    assert e["path"] == "/user?page=2"
    assert headers_of(e)["host"] == ["api.github.com"]
    assert_real_not_dummy(e)


def test_curl_round_trip_http2(sidecar, upstream):
    m = upstream.mark()
    code, version, body, _ = sidecar.curl(
        "/user", extra=["--http2", "-H", f"Authorization: Bearer {DUMMY}"])
    assert (code, version) == (200, "2"), body
    assert_real_not_dummy(upstream.wait_since(m)[0])


def test_dst_header_route_drops_dummy_api_key(sidecar, upstream):
    m = upstream.mark()
    code, _, body, _ = sidecar.curl(
        "/v1/messages", host="api.anthropic.com",
        extra=["-H", f"x-api-key: {DUMMY}", "-H", "content-type: application/json",
               "--data", '{"model":"x"}'])
    assert code == 200, body
    e = upstream.wait_since(m)[0]
    assert_real_not_dummy(e, "api.anthropic.com", "x-api-key", "{}")
    assert e["method"] == "POST" and e["body_len"] == len('{"model":"x"}')


def test_client_cannot_smuggle_tokenizer_headers(sidecar, upstream, tokenizer):
    """A client's own Proxy-Tokenizer (e.g. a stolen blob for another host) never reaches the
    tokenizer: the sidecar sends only the route's."""
    stolen = tokenizer.seal("ghp_STOLEN", "--host", "api.github.com")
    m = upstream.mark()
    code, _, body, _ = sidecar.curl("/user", host="api.openai.com", extra=[
        "-H", f"Proxy-Tokenizer: {stolen}", "-H", "Proxy-Authorization: Bearer x",
        "-H", "Fly-Src: instance=a;app=b;org=c;ts=1"])
    assert code == 200, body
    e = upstream.wait_since(m)[0]
    assert_real_not_dummy(e, "api.openai.com")
    assert "ghp_STOLEN" not in str(e["headers"])
    assert "fly-src" not in headers_of(e)


def test_host_mismatch_is_421_and_forwards_nothing(sidecar, upstream):
    m = upstream.mark()
    for proto in ["--http1.1", "--http2"]:
        code, _, body, _ = sidecar.curl("/user", extra=[proto, "-H", "Host: evil.example.com"])
        assert code == 421, (proto, body)
        assert "Misdirected" in body
    assert upstream.wait_since(m, timeout=0.3) == []


def test_host_mismatch_on_second_keepalive_request(sidecar, upstream):
    ctx = ssl.create_default_context(cafile=str(sidecar.ca))
    ctx.set_alpn_protocols(["http/1.1"])
    sock = socket.create_connection(("127.0.0.1", sidecar.port))
    tls = ctx.wrap_socket(sock, server_hostname="api.github.com")
    conn = http.client.HTTPSConnection("api.github.com", sidecar.port, context=ctx)
    conn.sock = tls
    m = upstream.mark()
    conn.request("GET", "/first")
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    conn.putrequest("GET", "/second", skip_host=True)
    conn.putheader("Host", "evil.example.com")
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 421, r.read()
    got = upstream.wait_since(m, n=2, timeout=1.0)
    assert [e["path"] for e in got] == ["/first"]


def test_unknown_sni_and_no_sni_get_no_certificate(sidecar):
    r = run(["curl", "-sS", "--max-time", "10", "--resolve",
             f"evil.example.com:{sidecar.port}:127.0.0.1", "--cacert", str(sidecar.ca),
             f"https://evil.example.com:{sidecar.port}/"], check=False)
    assert r.returncode == 35, r  # TLS handshake failure
    # No SNI: an IP address as the target.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", sidecar.port)) as s:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(s)  # no server_hostname: no SNI
    deadline = time.time() + 5
    while time.time() < deadline:
        log = sidecar.proc.output()
        if 'refused TLS handshake for SNI "evil.example.com"' in log and "no SNI" in log:
            break
        time.sleep(0.05)
    assert 'refused TLS handshake for SNI "evil.example.com"' in log
    assert "no SNI" in log


def test_ca_and_leaf(sidecar):
    r = run(["openssl", "x509", "-in", str(sidecar.ca), "-noout", "-text"])
    assert "Name Constraints: critical" in r.stdout
    assert "Permitted:" in r.stdout and "DNS:api.github.com" in r.stdout
    assert "CA:TRUE, pathlen:0" in r.stdout
    key = sidecar.ca.parent / "ca-key.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    # The served leaf verifies against the CA for the routed name.
    r = run(["sh", "-c", f"openssl s_client -connect 127.0.0.1:{sidecar.port} "
             f"-servername api.github.com -CAfile {sidecar.ca} -verify_hostname api.github.com "
             "</dev/null 2>&1"], check=False)
    assert "Verify return code: 0 (ok)" in r.stdout, r.stdout


def test_admin_answers(sidecar):
    code, _, body, _ = sidecar.curl("/ca-cert.pem", host="localhost")
    assert code == 200 and body.strip() == sidecar.ca.read_text().strip()
    code, _, body, _ = sidecar.curl("/healthz", host="localhost")
    assert (code, body.strip()) == (200, "ok")
    code, _, body, _ = sidecar.curl("/metrics", host="localhost")
    assert code == 200 and "proxypilot_requests_total" in body
    code, _, body, _ = sidecar.curl("/routes", host="localhost")
    assert code == 200 and json.loads(body) == {
        "routes": ["api.anthropic.com", "api.github.com", "api.openai.com"]}
    assert "secret" not in body.lower() and sidecar.env["PP_SEALED_GITHUB"] not in body


def test_health_subcommand_exits_0_when_up_and_1_with_a_reason_when_down(bin_path, sidecar):
    r = run([bin_path, "health", "--port", str(sidecar.port)])
    assert r.returncode == 0 and "200" in r.stdout, r
    # PORT from the environment, and the certificate verified against the CA
    r = run([bin_path, "health", "--ca", str(sidecar.ca)], env={"PORT": str(sidecar.port)})
    assert r.returncode == 0, r
    down = free_port()
    r = run([bin_path, "health", "--port", str(down), "--timeout", "2s"], check=False)
    assert r.returncode == 1 and "not healthy" in r.stderr and "refused" in r.stderr, r


def test_tokenizer_down_is_502_with_reason(bin_path, workdir, tokenizer):
    from stack import start_sidecar

    class Down:
        url = f"http://127.0.0.1:{free_port()}"
        seal = tokenizer.seal

    s = start_sidecar(bin_path, workdir, Down, name="sidecar-down")
    try:
        code, _, body, _ = s.curl("/user")
        assert code == 502, body
        assert "tokenizer" in body and "refused" in body, body
    finally:
        s.proc.stop()


def test_missing_env_var_exits_nonzero_naming_it(bin_path, workdir, tokenizer):
    d = workdir / "badconf"
    d.mkdir()
    conf = d / "proxy.yaml"
    conf.write_text(f"""\
version: 1
proxypilot:
  listen: ["127.0.0.1:{free_port()}"]
  ca: {{cert: {d}/ca.pem, key: {d}/ca-key.pem}}
  tokenizer: {{url: {tokenizer.url}}}
  routes:
    - host: api.github.com
      secret_env: PP_NOT_SET_ANYWHERE
""")
    r = run([bin_path, "serve", "-c", str(conf)], check=False)
    assert r.returncode != 0
    assert "PP_NOT_SET_ANYWHERE" in r.stderr and str(conf) in r.stderr, r.stderr
    assert not (d / "ca.pem").exists()  # nothing changed


def test_tlsproxy_dropin_env_mode(bin_path, workdir, tokenizer, upstream):
    d = workdir / "dropin"
    d.mkdir()
    port = free_port()
    env = {
        "TARGETS": "api.github.com=GH_TOKEN,api.anthropic.com=ANTHROPIC_API_KEY",
        "GH_TOKEN": tokenizer.seal(REAL["api.github.com"], "--host", "api.github.com"),
        "ANTHROPIC_API_KEY": tokenizer.seal(REAL["api.anthropic.com"], "--host",
                                            "api.anthropic.com", "--header", "x-api-key"),
        "PROXY": tokenizer.url,
        "PORT": str(port),
    }
    p = Proc("dropin", [bin_path, "serve"], env=env, cwd=d, log_dir=workdir)
    try:
        wait_port(port, p)
        assert (d / "ca.pem").exists() and (d / "ca-key.pem").exists()
        # Fetch the CA first, as the shell container's startup script does.
        fetched = d / "fetched-ca.pem"
        run(["curl", "-sSk", "--resolve", f"localhost:{port}:127.0.0.1", "-o", str(fetched),
             f"https://localhost:{port}/ca-cert.pem"])
        assert fetched.read_text() == (d / "ca.pem").read_text()
        m = upstream.mark()
        r = run(["curl", "-sS", "--resolve", f"api.github.com:{port}:127.0.0.1", "--cacert",
                 str(fetched), "-H", f"Authorization: Bearer {DUMMY}", "-w", "\n%{http_code}",
                 f"https://api.github.com:{port}/user"])
        assert r.stdout.endswith("\n200"), r.stdout
        assert_real_not_dummy(upstream.wait_since(m)[0])
        # IPv6 loopback too
        m = upstream.mark()
        r = run(["curl", "-sS", "--resolve", f"api.anthropic.com:{port}:[::1]", "--cacert",
                 str(fetched), "-H", f"x-api-key: {DUMMY}", "-w", "\n%{http_code}",
                 f"https://api.anthropic.com:{port}/v1/models"])
        assert r.stdout.endswith("\n200"), r.stdout
        assert_real_not_dummy(upstream.wait_since(m)[0], "api.anthropic.com", "x-api-key", "{}")
    finally:
        p.stop()


def test_stops_cleanly_on_sigint(bin_path, workdir, tokenizer):
    from stack import start_sidecar

    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-sigint")
    s.proc.stop()
    assert s.proc.returncode == 0, s.proc.output()


def test_logs_hold_no_secrets(sidecar, tokenizer):
    logs = sidecar.proc.output() + tokenizer.proc.output()
    for v in list(REAL.values()) + list(sidecar.env.values()) + [tokenizer.open_key]:
        assert v not in logs


def test_204_with_a_stray_length_is_clean_over_http2(sidecar):
    """The upstream's /status/204 wrongly sends Content-Length and a body; clients still get a
    clean 204 (no length), over HTTP/2 too, and the connection stays usable: curl sends a second
    request on it (num_connects 0) and gets the right answer."""
    for proto in ["--http2", "--http1.1"]:
        url = f"https://api.github.com:{sidecar.port}"
        r = run(["curl", "-sS", "--max-time", "20", *sidecar.resolve_args(), proto, "-D", "-",
                 "-o", "/dev/null", "-w", "CODE %{http_code} %{num_connects}\n",
                 f"{url}/status/204", "-o", "/dev/null", f"{url}/status/200"])
        codes = [l.split()[1:] for l in r.stdout.splitlines() if l.startswith("CODE ")]
        assert codes == [["204", "1"], ["200", "0"]], (proto, r.stdout, r.stderr)
        head_204 = r.stdout.lower().split("code 204")[0]
        assert "content-length" not in head_204, r.stdout


def test_421_on_a_later_http2_stream_forwards_nothing(sidecar, upstream):
    """Pinning holds per request, not per connection: on one HTTP/2 connection, a stream for
    another host gets 421 between two that go through."""
    import h2.config
    import h2.connection
    import h2.events

    tls = sidecar.tls_socket(alpn=("h2",))
    assert tls.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    m = upstream.mark()
    statuses = {}
    for sid, authority, path in [(1, "api.github.com", "/h2-first"), (3, "evil.example.com",
                                 "/h2-evil"), (5, "api.github.com", "/h2-third")]:
        conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                                (":authority", authority), (":path", path)], end_stream=True)
        tls.sendall(conn.data_to_send())
        deadline = time.time() + 10
        while sid not in statuses or statuses[sid][1] is False:
            assert time.time() < deadline, statuses
            for ev in conn.receive_data(tls.recv(65536)):
                if isinstance(ev, h2.events.ResponseReceived):
                    statuses[ev.stream_id] = (dict(ev.headers)[b":status"], False)
                elif isinstance(ev, h2.events.StreamEnded):
                    statuses[ev.stream_id] = (statuses[ev.stream_id][0], True)
            tls.sendall(conn.data_to_send())
    tls.close()
    assert {k: v[0] for k, v in statuses.items()} == {1: b"200", 3: b"421", 5: b"200"}
    got = upstream.wait_since(m, n=3, timeout=1.0)
    assert [e["path"] for e in got] == ["/h2-first", "/h2-third"]


def test_connect_is_refused(sidecar, upstream):
    m = upstream.mark()
    code, _, body, _ = sidecar.curl("/", extra=["--http1.1", "-X", "CONNECT",
                                                "--request-target", "api.github.com:443"])
    assert code in (400, 405), body
    assert upstream.since(m) == []


def test_a_port_in_use_is_a_clear_error_before_listening(bin_path, workdir, tokenizer):
    import socket

    from stack import start_sidecar

    with socket.socket() as busy:
        # Bound, not listening: the port is taken, yet nothing answers a connect (so the test
        # cannot mistake it for the sidecar).
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        try:
            start_sidecar(bin_path, workdir, tokenizer, name="sidecar-port-busy", port=port)
        except RuntimeError as e:
            out = str(e)
        else:
            raise AssertionError("the sidecar started on a port in use")
    assert "exited with 1" in out, out
    assert f"cannot listen on 127.0.0.1:{port}" in out and "in use" in out, out
    assert "listening on" not in out, out
