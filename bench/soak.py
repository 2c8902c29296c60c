#!/usr/bin/env python3
"""`make soak`: many keep-alive HTTPS clients for a long time through the sidecar and our
tokenizer; checks that no request fails and that memory and open files stay flat.

    make soak                                    # builds, then 1000 clients for 600 s;
                                                 # rewrites docs/soak.md
    python3 bench/soak.py                        # the same without building
    python3 bench/soak.py --duration 60 --clients 200 --no-write        # a quick run
    make soak SOAK_ARGS='--duration 60 --clients 200 --no-write'

PROXYPILOT_BIN (or --bin) picks the binary (default target/release/proxypilot). Only a run of at
least 1000 clients and 600 s writes docs/soak.md; --keep keeps the work directory (logs).

Everything runs on loopback, on ephemeral ports, started as tests/e2e/stack.py does:

    clients --TLS, HTTP/1.1 keep-alive--> proxypilot serve --HTTP--> proxypilot tokenizer
            --TLS--> tests/e2e/upstream.py (pinned with --connect-to)

Each client holds one TLS connection (to api.github.com or api.anthropic.com, verified against
the sidecar's CA) and loops: send a request, read the whole response, sleep 0.5-2 s. The mix:
85% normal (GET /user, POST /v1/messages; 200 and the upstream's echo of this very request with
the real credential), 10% server-sent events (GET /sse?n=5&gap_ms=50; 5 events), 5% expected
failures (GET /status/500 -> 500 passed through; a Host naming another routed host -> 421).
A connection the server closes is reopened and counted; a request that does not get its expected
answer is an error. At the end the upstream's request log is checked: every request arrived once,
with its host's real credential and without a dummy.

The sidecar's and the tokenizer's RSS (VmRSS) and open file descriptors (/proc/PID/fd) are read
before the clients connect, at the start of the measured period (after the warm-up), in its
middle, at its end, and after the clients have left. The run fails (exit 1) if:
  - any request got an unexpected answer (of any kind, normal or not), or a connect failed;
  - RSS at the end is above RSS_GROWTH (1.5) times RSS at the start (both under full load);
  - fds at the end are above FD_GROWTH (1.1) times fds at the start plus FD_SLACK (10);
  - fds do not come back to within FD_SLACK of the figure before the clients connected, within
    SETTLE_S after they left (the pools' idle timeouts, 50 s and 60 s, close the rest).
Only the standard library is needed.

Reading the RSS figures: pingora's timer wheel keeps every timeout it armed until that
timeout's deadline, even after the read completed, so with `read_timeout: 10m` both processes
used to grow for the first 10 minutes of traffic (first full run: tokenizer 31.5 -> 59.0 MiB).
Both programs now send timeouts over 30 s to tokio's timers (pingora's
`fast_timeout_to_tokio_threshold_seconds`), which forget a cancelled one, and stay flat.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import harness  # noqa: E402  (tests/harness.py, shared with the e2e tests and bench.py)

UPSTREAM = ROOT / "tests" / "e2e" / "upstream.py"
# upstream.py as is, with a listen backlog of 1024 instead of socketserver's 5: the tokenizer
# opens upstream connections in bursts when requests pile up, and its TLS handshakes happen in
# the accept loop, so with 5 a burst loses SYNs and those requests wait 1 s for a retry.
UPSTREAM_BOOT = ("import runpy, socketserver, sys; "
                 "socketserver.TCPServer.request_queue_size = 1024; "
                 "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
HOSTS = ["api.github.com", "api.anthropic.com", "api.openai.com"]
CLIENT_HOSTS = ["api.github.com", "api.anthropic.com"]  # client i uses CLIENT_HOSTS[i % 2]
OTHER_HOST = "api.openai.com"  # routed too: a Host naming it on another name's connection -> 421
REAL = {  # what the upstream must see instead of the dummy
    "api.github.com": ("authorization", "Bearer ghp_SOAKgithubTOKEN0123456789"),
    "api.anthropic.com": ("x-api-key", "sk-ant-SOAKanthropicKEY0123456789"),
    "api.openai.com": ("authorization", "Bearer sk-SOAKopenaiKEY0123456789"),
}

# The request mix: (kind, weight); "get" and "post" are the normal requests.
MIX = [("get", 42.5), ("post", 42.5), ("sse", 10), ("status500", 2.5), ("misdirected", 2.5)]
NORMAL = ("get", "post")
EXPECTED = {"get": 200, "post": 200, "sse": 200, "status500": 500, "misdirected": 421}
LABEL = {
    "get": "GET /user",
    "post": "POST /v1/messages",
    "sse": "GET /sse?n=5&gap_ms=50",
    "status500": "GET /status/500",
    "misdirected": f"GET /user, Host: {OTHER_HOST}",
}
SSE_EVENTS = 5
SLEEP_MIN, SLEEP_MAX = 0.5, 2.0  # between one client's requests
REQUEST_TIMEOUT = 30.0
CONNECT_TIMEOUT = 30.0

# Tolerances (see the docstring).
RSS_GROWTH = 1.5
FD_GROWTH = 1.1
FD_SLACK = 10
SETTLE_S = 120.0  # longest wait for fds to come back once the clients left
AFTER_TRIM_S = 12.0  # the sidecar trims its heap every 10 s: RSS "after" is read past one trim


# --------------------------------------------------------------------------------------------
# Processes (as tests/e2e/stack.py starts them, with the same helpers: tests/harness.py)

free_port = harness.free_port
Proc = harness.Proc
wait_port = harness.wait_port


def sh(args, input=None, env=None, cwd=None):
    """A command's stdout; raises when it fails."""
    return harness.run(args, input=input, env=env, cwd=cwd).stdout


def make_pki(d):
    """A throwaway CA and a certificate for the API hosts, for the upstream (openssl CLI)."""
    return harness.make_pki(d, HOSTS, label="proxypilot soak")




class Stack:
    """The upstream, the tokenizer and the sidecar, all on loopback."""

    def __init__(self, bin_path, work, rust_log):
        self.bin, self.work, self.rust_log = bin_path, work, rust_log
        self.procs = []

    def start(self, name, args, env=None):
        p = Proc(name, args, self.work, env)
        self.procs.append(p)
        return p

    def up(self):
        pki = make_pki(self.work / "pki")
        # The upstream logs every request (~0.5 KiB each): checked at the end.
        self.upstream_log = self.work / "upstream-requests.jsonl"
        ready = self.work / "upstream.port"
        self.upstream = up = self.start("upstream", [
            sys.executable, "-c", UPSTREAM_BOOT, str(UPSTREAM), "--cert", str(pki / "up.pem"),
            "--key", str(pki / "up.key"), "--log", str(self.upstream_log), "--ready", str(ready)])
        deadline = time.time() + 20
        while not ready.exists():
            if not up.alive() or time.time() > deadline:
                raise RuntimeError(f"upstream did not start:\n{up.output()}")
            time.sleep(0.05)
        up_port = int(ready.read_text())

        keys = dict(line.split("=", 1) for line in sh([self.bin, "keygen"]).split())
        tok_port = free_port()
        args = [self.bin, "tokenizer", "--listen", f"127.0.0.1:{tok_port}",
                "--upstream-ca", str(pki / "upca.pem")]
        for h in HOSTS:
            args += ["--connect-to", f"{h}:443:127.0.0.1:{up_port}"]
        self.tokenizer = self.start("tokenizer", args, {"OPEN_KEY": keys["OPEN_KEY"],
                                                        "RUST_LOG": self.rust_log})
        wait_port(tok_port, self.tokenizer)

        seal = lambda host, *extra: sh(  # noqa: E731
            [self.bin, "seal", "--host", host, *extra], input=REAL[host][1].split()[-1],
            env={"SEAL_KEY": keys["SEAL_KEY"]}).strip()
        env = {
            "PP_SEALED_GITHUB": seal("api.github.com"),
            "PP_SEALED_ANTHROPIC": seal("api.anthropic.com", "--header", "x-api-key"),
            "PP_SEALED_OPENAI": seal("api.openai.com"),
            "RUST_LOG": self.rust_log,
        }
        d = self.work / "sidecar"
        d.mkdir()
        self.port = free_port()
        conf = d / "proxy.yaml"
        conf.write_text(harness.sidecar_yaml(self.port, d / "ca",
                                             f"http://127.0.0.1:{tok_port}", threads=1,
                                             both_loopbacks=False))
        self.sealed = env
        self.sidecar = self.start("sidecar", [self.bin, "serve", "-c", str(conf)], env)
        wait_port(self.port, self.sidecar, tls=True)
        self.ca = d / "ca" / "ca.pem"

    def check_alive(self):
        for p in self.procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited ({p.p.returncode}):\n{p.output()}")

    def down(self):
        for p in reversed(self.procs):
            p.stop()


# --------------------------------------------------------------------------------------------
# /proc figures


def rss_mib(pid):
    return harness.rss_kib(pid) / 1024


fds = harness.fd_count


def cpu_seconds(pid):
    return harness.cpu_seconds([pid])


def sample(stack):
    """{"sidecar": (RSS MiB, fds), "tokenizer": (...)}."""
    stack.check_alive()
    return {p.name: (rss_mib(p.pid), fds(p.pid)) for p in (stack.sidecar, stack.tokenizer)}


def fmt_sample(s):
    return " | ".join(f"{name} {rss:.1f} MiB {n} fds" for name, (rss, n) in s.items())


# --------------------------------------------------------------------------------------------
# The clients: HTTP/1.1 by hand over asyncio TLS streams


class Failure(Exception):
    """A request that did not get its expected answer; str() is the reason (counted)."""


@dataclass
class Stats:
    ok: Counter = field(default_factory=Counter)  # kind -> requests answered as expected
    errors: Counter = field(default_factory=Counter)  # (kind, reason) -> count
    connects: int = 0
    closed_idle: Counter = field(default_factory=Counter)  # kind of the request before the
    # server closed the connection between requests (without saying so in the response)
    closed_after: int = 0  # the server closed after a response (Connection: close or EOF)
    latencies: list = field(default_factory=list)  # normal requests since the last progress line
    all_latencies: dict = field(default_factory=lambda: {k: [] for k in EXPECTED})

    def total(self):
        """Requests sent (failed connects are not requests)."""
        return sum(self.ok.values()) + sum(n for (k, _), n in self.errors.items() if k != "connect")

    def errors_by_kind(self):
        out = Counter()
        for (kind, _), n in self.errors.items():
            out[kind] += n
        return out


class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    def close(self):
        self.writer.close()


async def connect(port, host, ctx):
    r, w = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host,
                                ssl_handshake_timeout=CONNECT_TIMEOUT), CONNECT_TIMEOUT)
    return Conn(r, w)


async def read_response(reader):
    """(status, headers dict (lower-case names), body bytes, keep-alive?)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise Failure("bad status line")
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    keep = headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:  # delimited by the end of the connection
        body, keep = await reader.read(), False
    return status, headers, body, keep


async def read_chunked(reader):
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return bytes(body)
        body += (await reader.readexactly(size + 2))[:-2]


def path_of(kind, rid):
    """The request's path: the request id rides in the query, which the upstream echoes and logs."""
    return {"get": "/user", "post": "/v1/messages", "sse": f"/sse?n={SSE_EVENTS}&gap_ms=50",
            "status500": "/status/500", "misdirected": "/user"}[kind] + (
        "&" if kind == "sse" else "?") + f"soak={rid}"


def build_request(kind, host, rid):
    """The request bytes for one kind, with both dummy credentials (the sidecar drops them)."""
    head = (f"Host: {OTHER_HOST if kind == 'misdirected' else host}\r\n"
            "Authorization: Bearer dummy\r\nX-Api-Key: dummy\r\n")
    if kind == "post":
        body = json.dumps({"model": "soak", "max_tokens": 16,
                           "messages": [{"role": "user", "content": rid}]}).encode()
        return (f"POST {path_of(kind, rid)} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    accept = "text/event-stream" if kind == "sse" else "application/json"
    return f"GET {path_of(kind, rid)} HTTP/1.1\r\n{head}Accept: {accept}\r\n\r\n".encode()


def check_answer(kind, host, rid, status, body):
    """Raise Failure unless this is the expected answer to this very request."""
    if status != EXPECTED[kind]:
        raise Failure(f"status {status}")
    if kind == "get":
        try:
            echo = json.loads(body)
        except ValueError:
            raise Failure("bad body")
        if echo.get("path") != path_of(kind, rid):
            raise Failure("answer to another request")
        # The upstream may show credential values as "<redacted>": then only which header
        # arrived is checked here, and the values in its request log at the end.
        seen = {k.lower(): v for k, v in echo.get("headers", {}).items()}
        name, value = REAL[host]
        other = "x-api-key" if name == "authorization" else "authorization"
        if seen.get(name) not in (value, "<redacted>") or other in seen:
            raise Failure("wrong credential upstream")
    elif kind == "post":
        try:
            text = json.loads(body)["content"][0]["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise Failure("bad body")
        if text != "echo: " + rid:
            raise Failure("answer to another request")
    elif kind == "sse":
        try:
            events = [json.loads(line[6:])["i"] for line in body.split(b"\n")
                      if line.startswith(b"data: ")]
        except (ValueError, KeyError, TypeError):
            raise Failure("bad event")
        if events != list(range(SSE_EVENTS)):
            raise Failure(f"{len(events)} events")


async def one_request(conn, kind, host, rid):
    """Send, read and check one request; returns whether the connection stays open."""
    conn.writer.write(build_request(kind, host, rid))
    await conn.writer.drain()
    status, _, body, keep = await read_response(conn.reader)
    check_answer(kind, host, rid, status, body)
    return keep


def reason_of(e):
    if isinstance(e, Failure):
        return str(e)
    if isinstance(e, asyncio.IncompleteReadError):
        return "closed mid-response" if e.partial else "closed before the response"
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, OSError):
        return type(e).__name__
    return f"{type(e).__name__}: {e}"


async def client(i, a, ctx, stats, t_start, stop_at):
    """One keep-alive client: requests on one connection until stop_at, reconnecting if closed."""
    rng = random.Random(a.seed * 100003 + i)
    host = CLIENT_HOSTS[i % len(CLIENT_HOSTS)]
    kinds, weights = zip(*MIX)
    await asyncio.sleep(a.ramp * i / a.clients)  # spread the handshakes over the ramp
    conn, n, kind = None, 0, None
    while time.monotonic() < stop_at:
        if conn is not None and conn.reader.at_eof():
            stats.closed_idle[kind] += 1
            conn.close()
            conn = None
        if conn is None:
            try:
                conn = await connect(a.port, host, ctx)
                stats.connects += 1
            except Exception as e:  # noqa: BLE001 - every failure is counted
                stats.errors[("connect", reason_of(e))] += 1
                await asyncio.sleep(1.0)
                continue
        kind = rng.choices(kinds, weights)[0]
        n += 1
        rid = f"c{i}-{n}"
        t0, keep = time.monotonic(), False
        try:
            keep = await asyncio.wait_for(one_request(conn, kind, host, rid), REQUEST_TIMEOUT)
            stats.ok[kind] += 1
            elapsed = time.monotonic() - t0
            stats.all_latencies[kind].append(elapsed)
            if kind in NORMAL:
                stats.latencies.append(elapsed)
            if not keep:
                stats.closed_after += 1
        except Exception as e:  # noqa: BLE001 - every failure is counted
            stats.errors[(kind, reason_of(e))] += 1
            if a.verbose:
                print(f"  client {i} {kind} {rid} at {time.monotonic() - t_start:.1f}s: "
                      f"{reason_of(e)}", flush=True)
        if not keep:
            conn.close()
            conn = None
        await asyncio.sleep(rng.uniform(SLEEP_MIN, SLEEP_MAX))
    if conn is not None:
        conn.close()


# --------------------------------------------------------------------------------------------
# The run


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def ms(v):
    return "–" if v is None else f"{v * 1000:.0f}"


def progress_row(t, stats, last, s):
    """The figures since the last row (`last`, or None); takes the latencies collected since."""
    lat, stats.latencies = stats.latencies, []
    total = stats.total()
    since = t - (last["t"] if last else 0)
    return {"t": t, "requests": total, "rps": (total - (last["requests"] if last else 0)) / since,
            "errors": dict(sorted(stats.errors_by_kind().items())),
            "reconnects": sum(stats.closed_idle.values()) + stats.closed_after,
            "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "max": max(lat) if lat else None,
            "sample": s}


def progress_line(row):
    errs = ", ".join(f"{k} {n}" for k, n in row["errors"].items()) or "none"
    return (f"[{row['t']:5.0f}s] {row['requests']} requests ({row['rps']:.0f}/s) errors: {errs} | "
            f"reconnects {row['reconnects']} | normal p50 {ms(row['p50'])} ms p99 "
            f"{ms(row['p99'])} ms max {ms(row['max'])} ms | {fmt_sample(row['sample'])}")


async def drive(a, stack, stats, samples):
    """Run the clients for a.duration seconds, sampling /proc at start, mid and end."""
    ctx = ssl.create_default_context(cafile=str(stack.ca))
    ctx.set_alpn_protocols(["http/1.1"])
    t_start = time.monotonic()
    stop_at = t_start + a.duration
    marks = {"start": a.warmup, "mid": (a.warmup + a.duration) / 2, "end": a.duration - 0.5}
    tasks = [asyncio.create_task(client(i, a, ctx, stats, t_start, stop_at))
             for i in range(a.clients)]
    next_progress, series = a.progress, []
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.25)
        t = time.monotonic() - t_start
        for name, at in list(marks.items()):
            if t >= at:
                samples[name] = sample(stack)
                del marks[name]
        if t >= next_progress:
            series.append(progress_row(t, stats, series[-1] if series else None, sample(stack)))
            print(progress_line(series[-1]), flush=True)
            next_progress += a.progress
        if t > a.duration + REQUEST_TIMEOUT + 15:
            print("clients did not stop in time; cancelling", flush=True)
            for task in tasks:
                task.cancel()
            break
    await asyncio.gather(*tasks, return_exceptions=True)
    every = [row["sample"] for row in series] + [samples["end"]]
    samples["peak"] = {name: (max(x[name][0] for x in every), max(x[name][1] for x in every))
                       for name in ("sidecar", "tokenizer")}
    samples["series"] = series


def settle(stack, before):
    """After the clients left: RSS past one heap trim, and fds once back to the figure before
    the clients (or after SETTLE_S); also how long that took."""
    time.sleep(AFTER_TRIM_S)
    after = sample(stack)
    t0 = time.monotonic()
    while True:
        s = sample(stack)
        back = all(s[n][1] <= before[n][1] for n in s)
        if back or time.monotonic() - t0 > SETTLE_S - AFTER_TRIM_S:
            break
        time.sleep(1)
    waited = AFTER_TRIM_S + time.monotonic() - t0
    return {n: (after[n][0], s[n][1]) for n in s}, waited


def verdicts(stats, samples, upstream):
    """The list of reasons the run failed (empty: it passed)."""
    bad = [f"upstream: {n} request(s) with {what}" for what, n in sorted(upstream["bad"].items())]
    for kind, n in sorted(stats.errors_by_kind().items()):
        bad.append(f"{n} {kind} request(s) failed" if kind != "connect"
                   else f"{n} connect(s) failed")
    for name in ("sidecar", "tokenizer"):
        (rss0, fd0), (rss1, fd1) = samples["start"][name], samples["end"][name]
        if rss1 > RSS_GROWTH * rss0:
            bad.append(f"{name} RSS grew from {rss0:.1f} to {rss1:.1f} MiB "
                       f"(more than {RSS_GROWTH}x)")
        if fd1 > FD_GROWTH * fd0 + FD_SLACK:
            bad.append(f"{name} fds grew from {fd0} to {fd1} (more than {FD_GROWTH}x + {FD_SLACK})")
        if samples["after"][name][1] > samples["before"][name][1] + FD_SLACK:
            bad.append(f"{name} fds did not come back after the clients left: "
                       f"{samples['before'][name][1]} before, {samples['after'][name][1]} after")
    return bad


# --------------------------------------------------------------------------------------------
# The report


def report(a, stats, samples, waited, elapsed, upstream, bad, command):
    """The result as markdown tables (printed, and written to docs/soak.md)."""
    return "\n\n".join([
        summary_table(a, stats, samples, elapsed, upstream, bad, command),
        requests_table(stats),
        errors_list(stats),
        resources_table(samples),
        f"\"after clients left\": RSS {AFTER_TRIM_S:.0f} s after the last client closed (past "
        f"one heap trim), fds {waited:.0f} s after (pooled connections close on their idle "
        f"timeouts). Tolerances: RSS end ≤ {RSS_GROWTH}x start; fds end ≤ {FD_GROWTH}x start + "
        f"{FD_SLACK}; fds after ≤ before + {FD_SLACK}; no request with an unexpected answer.",
        f"Every {a.progress:.0f} s (latencies of the normal requests in that interval):",
        series_table(samples["series"]),
    ]) + "\n"


def summary_table(a, stats, samples, elapsed, upstream, bad, command):
    total = stats.total()
    idle = ", ".join(f"{n:,} after {LABEL.get(k, k)}" for k, n in stats.closed_idle.most_common())
    checked = ", ".join(f"{k}: {v}" for k, v in sorted(upstream["bad"].items()))
    cpu = ", ".join(f"{k} {v:.0f} s" for k, v in samples["cpu"].items())
    rows = [
        ("Command", f"`{command}`"),
        ("Date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("Machine", f"{os.cpu_count()} CPUs, Linux {platform.release()}, "
                    f"Python {platform.python_version()}"),
        ("Binary", f"`{a.bin}` ({version(a.bin)})"),
        ("Duration", f"{a.duration:.0f} s; figures from {a.warmup:.0f} s on (clients connect "
                     f"over the first {a.ramp:.0f} s)"),
        ("Clients", f"{a.clients} TLS HTTP/1.1 keep-alive clients, {SLEEP_MIN}–{SLEEP_MAX} s "
                    "between requests"),
        ("Requests", f"{total:,} ({total / elapsed:.0f}/s)"),
        ("Connections", f"{stats.connects:,} opened; closed by the server between requests: "
                        f"{sum(stats.closed_idle.values()):,}{' (' + idle + ')' if idle else ''}"
                        f"; with `Connection: close`: {stats.closed_after:,}"),
        ("Upstream", f"{upstream['requests']:,} requests received, {upstream['forwarded']:,} "
                     "expected (the clients' requests less the 421s); " + (
                         checked or "each with its host's real credential, no dummy, none twice")),
        ("CPU time", f"{cpu} (of {elapsed * os.cpu_count():.0f} CPU-seconds)"),
        ("Result", "**PASS**" if not bad else "**FAIL**: " + "; ".join(bad)),
    ]
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def requests_table(stats):
    L = ["| request | expected | requests | errors | p50 ms | p99 ms | max ms |",
         "|---|---:|---:|---:|---:|---:|---:|"]
    errs = stats.errors_by_kind()
    for kind in EXPECTED:
        lat = stats.all_latencies[kind]
        L.append(f"| {LABEL[kind]} | {EXPECTED[kind]} | {stats.ok[kind] + errs[kind]:,} | "
                 f"{errs[kind]} | {ms(pct(lat, 0.5))} | {ms(pct(lat, 0.99))} | "
                 f"{ms(max(lat) if lat else None)} |")
    if errs["connect"]:
        L.append(f"| (connects) | | | {errs['connect']} | | | |")
    return "\n".join(L)


def errors_list(stats):
    if not stats.errors:
        return "Errors: none."
    return "\n".join(["Errors by kind and reason:", ""] + [
        f"- {kind}: {reason}: {n}" for (kind, reason), n in sorted(stats.errors.items())])


def resources_table(samples):
    L = ["| process | figure | before clients | start | mid | end | end/start | peak | "
         "after clients left |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("sidecar", "tokenizer"):
        for i, (what, f) in enumerate((("RSS MiB", "{:.1f}"), ("open fds", "{}"))):
            v = {k: samples[k][name][i] for k in ("before", "start", "mid", "end", "peak", "after")}
            cells = [f.format(v[k]) for k in ("before", "start", "mid", "end")]
            cells += [f"{v['end'] / v['start']:.2f}", f.format(v["peak"]), f.format(v["after"])]
            L.append(f"| {name} | {what} | " + " | ".join(cells) + " |")
    return "\n".join(L)


def series_table(series):
    L = ["| s | requests | req/s | errors | p50 ms | p99 ms | max ms | sidecar MiB | sidecar fds "
         "| tokenizer MiB | tokenizer fds |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in series:
        (srss, sfd), (trss, tfd) = row["sample"]["sidecar"], row["sample"]["tokenizer"]
        L.append(f"| {row['t']:.0f} | {row['requests']:,} | {row['rps']:.0f} | "
                 f"{sum(row['errors'].values())} | {ms(row['p50'])} | {ms(row['p99'])} | "
                 f"{ms(row['max'])} | {srss:.1f} | {sfd} | {trss:.1f} | {tfd} |")
    return "\n".join(L)


def version(bin_path):
    try:
        return subprocess.run([bin_path, "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError:
        return "?"


def check_upstream_log(path, stats):
    """What reached the upstream: each request must carry its host's real credential, no dummy,
    and arrive once (its request id, in the query, seen once)."""
    received, bad, ids = 0, Counter(), set()
    with open(path, errors="replace") as f:
        for line in f:
            try:
                e = json.loads(line)
                headers = {k.lower(): v for k, v in e["headers"]}
                rid = parse_qs(urlsplit(e["path"]).query)["soak"][0]
            except (ValueError, KeyError, IndexError, TypeError):
                bad["an unreadable log line"] += 1
                continue
            received += 1
            name, value = REAL.get(headers.get("host"), (None, None))
            if headers.get(name) != value:
                bad["a wrong or missing credential"] += 1
            if any("dummy" in v for v in headers.values()):
                bad["a dummy credential"] += 1
            if rid in ids:
                bad["an id seen before (delivered twice)"] += 1
            ids.add(rid)
    forwarded = stats.total() - stats.ok["misdirected"] - stats.errors_by_kind()["misdirected"]
    return {"requests": received, "forwarded": forwarded, "bad": bad}


def log_warnings(stack, limit=8):
    """The sidecar's and tokenizer's WARN/ERROR log lines, grouped with numbers blanked; the
    per-request lines of the expected 500s and 421s are left out."""
    out = []
    for p in (stack.sidecar, stack.tokenizer):
        p._log.flush()
        groups = Counter()
        with open(p.log_path, errors="replace") as f:
            for line in f:
                if " WARN " not in line and " ERROR " not in line:
                    continue
                if "/status/500" in line or "status=421" in line:
                    continue
                groups[re.sub(r"\d+", "N", line.split("]", 1)[-1].strip())[:200]] += 1
        if groups:
            out.append(f"{p.name}: {sum(groups.values())} other WARN/ERROR log lines:")
            out += [f"  {n:6} x {msg}" for msg, n in groups.most_common(limit)]
    return out


MARKDOWN = """# Soak test

`make soak` (`bench/soak.py`): {clients} keep-alive HTTPS clients for {duration:.0f} s through the
sidecar (`proxypilot serve`, `threads: 1`) and our tokenizer (`proxypilot tokenizer`) to a local
HTTPS upstream (`tests/e2e/upstream.py`), all on loopback. Each client sends a request, reads the
whole answer, sleeps 0.5–2 s and repeats on the same connection. Normal requests must get the
upstream's echo of that very request with the real credential; event streams must deliver all
their events; a 500 must pass through and a Host naming another routed host must get 421.

{table}"""


# --------------------------------------------------------------------------------------------


def raise_fd_limit(clients):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < clients + 200:
        sys.exit(f"the fd limit ({want}) is too low for {clients} clients")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=600, help="seconds of traffic")
    ap.add_argument("--warmup", type=float,
                    help="seconds before the 'start' figures (default 60, at most a third of "
                    "--duration)")
    ap.add_argument("--ramp", type=float, help="seconds over which the clients connect "
                    "(default clients/100)")
    ap.add_argument("--progress", type=float, default=30, help="seconds between progress lines")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bin", default=os.environ.get("PROXYPILOT_BIN")
                    or str(ROOT / "target" / "release" / "proxypilot"))
    ap.add_argument("--rust-log", default="info", help="RUST_LOG for proxypilot (default info)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "soak.md"))
    ap.add_argument("--no-write", action="store_true", help="print only, do not write --out")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--verbose", action="store_true", help="print every failed request")
    a = ap.parse_args()
    if a.warmup is None:
        a.warmup = min(60, a.duration / 3)
    elif not 0 <= a.warmup < a.duration - 1:
        sys.exit("--warmup must be shorter than --duration")
    a.ramp = a.clients / 100 if a.ramp is None else a.ramp
    a.ramp = min(a.ramp, a.warmup)
    if not Path(a.bin).exists():
        sys.exit(f"{a.bin} is missing: run `make build` (make soak does) or set PROXYPILOT_BIN")
    raise_fd_limit(a.clients)
    command = " ".join(["python3", "bench/soak.py", *sys.argv[1:]])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    work = Path(tempfile.mkdtemp(prefix="pp-soak-"))
    stack = Stack(a.bin, work, a.rust_log)
    try:
        stack.up()
        a.port = stack.port
        time.sleep(1)
        samples = {"before": sample(stack)}
        print(f"{a.clients} clients for {a.duration:.0f} s (ramp {a.ramp:.0f} s, figures from "
              f"{a.warmup:.0f} s) via sidecar :{stack.port}; before: "
              f"{fmt_sample(samples['before'])}", flush=True)
        stats = Stats()
        procs = (stack.sidecar, stack.tokenizer, stack.upstream)
        cpu0 = {p.name: cpu_seconds(p.pid) for p in procs}
        cpu0["clients"] = time.process_time()
        t0 = time.monotonic()
        asyncio.run(drive(a, stack, stats, samples))
        elapsed = time.monotonic() - t0
        samples["cpu"] = {p.name: cpu_seconds(p.pid) - cpu0[p.name] for p in procs}
        samples["cpu"]["clients (this script)"] = time.process_time() - cpu0["clients"]
        print(f"clients done after {elapsed:.0f} s; waiting for the processes to settle",
              flush=True)
        samples["after"], waited = settle(stack, samples["before"])
        upstream = check_upstream_log(stack.upstream_log, stats)
        bad = verdicts(stats, samples, upstream)
        table = report(a, stats, samples, waited, elapsed, upstream, bad, command)
        print()
        print(table)
        for line in log_warnings(stack):
            print(line)
        if a.no_write:
            pass
        elif a.duration < 600 or a.clients < 1000:
            print(f"not writing {a.out}: only a full run (--clients 1000 --duration 600 or more) "
                  "does")
        else:
            out = Path(a.out)
            out.write_text(MARKDOWN.format(clients=a.clients, duration=a.duration, table=table))
            print(f"wrote {out}")
        print("PASS" if not bad else "FAIL: " + "; ".join(bad))
        return 0 if not bad else 1
    finally:
        stack.down()
        if a.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
