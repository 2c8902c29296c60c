"""Operating the sidecar: the JSON access log, and a configuration reload (pingora's graceful
upgrade, `serve -u` + SIGQUIT to the old process) that keeps open connections working."""

import json
import os
import signal
import time

from stack import REAL, Proc, headers_of, read_response, start_sidecar


def json_lines(text):
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_json_access_log_one_object_per_request_and_no_secret(bin_path, workdir, tokenizer,
                                                              upstream):
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-jsonlog",
                      section_extra="  access_log: json\n")
    try:
        marker = "query-secret-NOT-LOGGED"
        assert s.curl(f"/user?access_token={marker}", extra=["--http1.1"])[0] == 200
        assert s.curl("/user/two", extra=["--http2"])[0] == 200
        assert s.curl("/user", extra=["-H", "Host: evil.example.com"])[0] == 421
        assert s.curl("/healthz", host="localhost")[0] == 200
        # two requests on one connection: the second reuses the tokenizer connection
        with s.tls_socket() as c:
            for i in range(2):
                c.sendall(f"GET /again/{i} HTTP/1.1\r\nHost: api.github.com\r\n\r\n".encode())
                assert read_response(c)[0] == 200
        deadline = time.time() + 5
        while len(json_lines(s.proc.output())) < 6 and time.time() < deadline:
            time.sleep(0.05)
        lines = json_lines(s.proc.output())
        assert len(lines) == 6, s.proc.output()
        first = lines[0]
        assert set(first) == {"time", "route", "method", "path", "protocol", "status", "bytes",
                              "duration_ms", "tokenizer_connection", "reason"}, first
        assert (first["route"], first["method"], first["path"], first["status"]) == \
            ("api.github.com", "GET", "/user", 200)
        assert first["bytes"] > 0 and first["duration_ms"] > 0 and first["time"].endswith("Z")
        assert lines[1]["protocol"] == "HTTP/2.0" and lines[1]["path"] == "/user/two"
        assert lines[2]["status"] == 421 and "Misdirected" in lines[2]["reason"]
        assert lines[2]["tokenizer_connection"] is None
        assert lines[3]["route"] == "localhost"
        # A fresh sidecar's first tokenizer connection is new; later ones come from the pool.
        assert lines[0]["tokenizer_connection"] == "new"
        assert lines[5]["tokenizer_connection"] == "reused"
        text = s.proc.output()
        for secret in [marker, REAL["api.github.com"], *s.env.values()]:
            assert secret not in text
    finally:
        s.proc.stop()


def test_reload_keeps_open_connections_and_changes_a_route(bin_path, workdir, tokenizer,
                                                          upstream):
    """New config (the route's secret rotated): `serve -c CONF -u` takes over the listening
    sockets when the old process gets SIGQUIT. A keep-alive connection opened before keeps
    working; new connections get the new route."""
    d = workdir / "reload"
    d.mkdir()
    sock = d / "upgrade.sock"
    extra = (f"upgrade_sock: {sock}\n")
    old = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-reload", yaml_extra=extra)
    new = None
    try:
        c = old.tls_socket()
        m = upstream.mark()
        c.sendall(b"GET /before HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
        assert read_response(c)[0] == 200
        assert headers_of(upstream.wait_since(m)[0])["authorization"] == \
            [f"Bearer {REAL['api.github.com']}"]

        # The same config file, with the GitHub route's secret rotated.
        rotated = "ghp_ROTATEDtokenAfterReload0123"
        env = dict(old.env, PP_SEALED_GITHUB=tokenizer.seal(rotated, "--host", "api.github.com"))
        conf = old.workdir / "proxy.yaml"
        new = Proc("sidecar-reload-new", [bin_path, "serve", "-c", str(conf), "-u"], env=env,
                   log_dir=workdir)
        deadline = time.time() + 20
        while not sock.exists():
            assert new.poll() is None, new.output()
            assert time.time() < deadline, "the new process never listened on upgrade_sock"
            time.sleep(0.05)
        os.kill(old.proc.p.pid, signal.SIGQUIT)

        # The connection opened before the reload still works.
        m = upstream.mark()
        c.sendall(b"GET /during HTTP/1.1\r\nHost: api.github.com\r\n\r\n")
        status, headers, _ = read_response(c)
        assert status == 200, headers
        c.close()
        # New connections soon reach the new process, with the rotated secret.
        deadline = time.time() + 20
        while time.time() < deadline:
            m = upstream.mark()
            code, _, body, _ = old.curl("/after", check=False)
            if code == 200 and headers_of(upstream.wait_since(m)[0])["authorization"] == \
                    [f"Bearer {rotated}"]:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no request reached the reloaded sidecar:\n" + new.output())
        # The old process drains and exits; the new one serves on the same port.
        old.proc.p.wait(timeout=30)
        assert new.poll() is None
        assert old.curl("/still", check=False)[0] == 200
    finally:
        old.proc.stop()
        if new:
            new.stop()
    assert not port_in_use(old.port)


def port_in_use(port):
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
