"""Streaming and connection reuse through the sidecar (correctness, not speed)."""

import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from stack import REAL, harness, headers_of, start_sidecar, start_tokenizer


def tls_conn(sidecar, host="api.github.com"):
    ctx = ssl.create_default_context(cafile=str(sidecar.ca))
    ctx.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection(host, sidecar.port, context=ctx, timeout=30)
    conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", sidecar.port)),
                                server_hostname=host)
    return conn


@pytest.mark.parametrize("proto", ["--http1.1", "--http2"])
def test_sse_events_arrive_one_by_one(sidecar, proto):
    """Each event reaches the client before the upstream sends the next one."""
    args = ["curl", "-sSN", proto, "--max-time", "30", *sidecar.resolve_args(),
            f"https://api.github.com:{sidecar.port}/sse?n=6&gap_ms=300"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    events = []
    for line in p.stdout:
        if line.startswith("data: "):
            events.append((time.time(), json.loads(line[6:])))
    p.wait()
    assert len(events) == 6, events
    for (arrived, ev), (_, nxt) in zip(events, events[1:]):
        assert arrived < nxt["sent"], (ev, nxt, arrived)
        assert arrived - ev["sent"] < 0.25, (ev, arrived)


@pytest.fixture(scope="module")
def big_file(workdir):
    path = workdir / "upload-50m.bin"
    with open(path, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(1 << 20))
    return path


def reset_peak(pid):
    """Start measuring the peak RSS (VmHWM) of `pid` afresh (Linux clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_growth_mib(pid, before_kib):
    return (harness.status_kb(pid, "VmHWM") - before_kib) / 1024


# A sidecar that buffered a 50 MB body would peak 50 MB higher; streaming it costs a few.
STREAMING_PEAK_MIB = 16


@pytest.mark.parametrize("proto", ["--http1.1", "--http2"])
def test_50mb_upload_byte_exact(sidecar, upstream, big_file, proto):
    want = hashlib.sha256(big_file.read_bytes()).hexdigest()
    m = upstream.mark()
    before = harness.rss_kib(sidecar.pid())
    reset_peak(sidecar.pid())
    code, _, body, _ = sidecar.curl("/upload", extra=[proto, "--data-binary", f"@{big_file}",
                                                      "-H", "Content-Type: application/octet-stream"])
    assert code == 200, body
    growth = peak_growth_mib(sidecar.pid(), before)
    assert growth < STREAMING_PEAK_MIB, f"the sidecar peaked {growth:.1f} MiB higher: buffering?"
    e = upstream.wait_since(m)[0]
    assert (e["body_len"], e["body_sha256"]) == (50 << 20, want)
    assert headers_of(e)["authorization"] == [f"Bearer {REAL['api.github.com']}"]


@pytest.mark.parametrize("proto", ["--http1.1", "--http2"])
def test_50mb_download_byte_exact(sidecar, workdir, proto):
    n = 50 << 20
    out = workdir / f"download{proto}.bin"
    before = harness.rss_kib(sidecar.pid())
    reset_peak(sidecar.pid())
    code, _, _, _ = sidecar.curl(f"/bytes/{n}", extra=[proto, "-o", str(out)])
    assert code == 200
    growth = peak_growth_mib(sidecar.pid(), before)
    assert growth < STREAMING_PEAK_MIB, f"the sidecar peaked {growth:.1f} MiB higher: buffering?"
    block = bytes(range(256)) * 4096
    h = hashlib.sha256()
    left = n
    while left:
        piece = block[:min(len(block), left)]
        h.update(piece)
        left -= len(piece)
    assert out.stat().st_size == n
    assert hashlib.sha256(out.read_bytes()).hexdigest() == h.hexdigest()


def tokenizer_connections(tok, since_line=0, expect=0, timeout=5.0):
    """Distinct client source addresses in the tokenizer's per-request log lines, once at least
    `expect` such lines have appeared (or `timeout` passed)."""
    deadline = time.time() + timeout
    while True:
        lines = [l for l in tok.proc.output().splitlines()[since_line:] if " source=" in l]
        if len(lines) >= expect or time.time() > deadline:
            return {m.group(1) for l in lines if (m := re.search(r" source=(\S+)", l))}
        time.sleep(0.05)


def get_on_one_connection(sidecar, prefix, n):
    """`n` GETs on one new client connection, each answered 200."""
    conn = tls_conn(sidecar)
    for i in range(n):
        conn.request("GET", f"{prefix}/{i}")
        r = conn.getresponse()
        r.read()
        assert r.status == 200
    conn.close()


def test_keepalive_tokenizer_is_reused(sidecar, tokenizer):
    before = len(tokenizer.proc.output().splitlines())
    get_on_one_connection(sidecar, "/reuse", 1000)
    used = tokenizer_connections(tokenizer, before, expect=1000)
    assert 1 <= len(used) <= 4, used  # far fewer tokenizer connections than requests


def test_tokenizer_connections_are_shared_by_many_client_connections(sidecar, tokenizer):
    """The pool belongs to the sidecar, not to a client connection: 30 client connections one
    after another, 10 requests each, go over one or two tokenizer connections."""
    before = len(tokenizer.proc.output().splitlines())
    for c in range(30):
        get_on_one_connection(sidecar, f"/shared/{c}", 10)
    used = tokenizer_connections(tokenizer, before, expect=300)
    assert 1 <= len(used) <= 2, used


@pytest.fixture(scope="module")
def closing(bin_path, workdir, pki, upstream):
    """A tokenizer that closes every connection (like the reference) and sidecars in front."""
    t = start_tokenizer(bin_path, workdir, pki, upstream, name="tok-closing",
                        extra=["--close-connections"])
    plain = start_sidecar(bin_path, workdir, t, name="sidecar-closing")
    yield t, plain
    plain.proc.stop()
    t.proc.stop()


def test_200_sequential_posts_with_closing_tokenizer(closing, upstream):
    _, sidecar = closing
    conn = tls_conn(sidecar)
    m = upstream.mark()
    for i in range(200):
        body = json.dumps({"i": i}).encode()
        conn.request("POST", f"/post/{i}", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200, (i, r.status)
    conn.close()
    got = upstream.wait_since(m, n=200)
    assert [e["path"] for e in got] == [f"/post/{i}" for i in range(200)]


def test_spares_are_used_with_closing_tokenizer(bin_path, workdir, closing):
    t, _ = closing
    s = start_sidecar(bin_path, workdir, t, name="sidecar-with-spares",
                      tokenizer_extra="    spares: 2\n")
    try:
        conn = tls_conn(s)
        for i in range(20):
            conn.request("POST", f"/spare/{i}", body=b"{}")
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            time.sleep(0.01)  # pace the requests so that the spares refill in between
        conn.close()
        code, _, body, _ = s.curl("/metrics", host="localhost")
        used = int(re.search(r"^proxypilot_tokenizer_spares_used_total (\d+)", body, re.M).group(1))
        assert used >= 10, body
    finally:
        s.proc.stop()
