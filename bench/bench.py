#!/usr/bin/env python3
"""`make bench`: proxypilot against the limit (direct), nginx and mitmproxy doing the sidecar's job.

One run starts everything on loopback (ephemeral ports), drives it with h2load, prints the tables
and rewrites docs/benchmarks.md. Nothing leaves the machine.

    python3 bench/bench.py            # the full run (about 10 minutes)
    python3 bench/bench.py --quick    # a smoke test: short durations, one run

Processes (all on 127.0.0.1):

    h2load --TLS--> nginx "upstream" (static JSON, cert for api.github.com)         [direct]
    h2load --TLS--> proxypilot serve ---> proxypilot tokenizer --TLS--> upstream     [proxypilot]
    h2load --TLS--> nginx as sidecar ---> same tokenizer --TLS--> upstream           [nginx]
    h2load --TLS--> mitmdump (reverse mode + bench/mitm_addon.py) ---> same tokenizer [mitmproxy]
    h2load --TLS--> proxypilot serve ---> bench/relay.py (closes every connection,
                                          delays by --rtt-ms) ---> same tokenizer    [relay]

The tokenizer also pins api.anthropic.com to a Python upstream (tests/e2e/upstream.py) for the
server-sent events check. Only the standard library is needed here; mitmproxy runs from the venv
scripts/bench-setup.sh makes.
"""

import argparse
import asyncio
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
HOST = "api.github.com"  # the routed name every load test uses
SSE_HOST = "api.anthropic.com"  # pinned by the tokenizer to the Python SSE upstream
REAL_TOKEN = "ghp_benchREALtoken0123456789"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# What the fast upstream answers: a small, fixed, GitHub-like JSON body.
BODY = json.dumps(
    {"login": "octocat", "id": 583231, "type": "User", "site_admin": False,
     "name": "The Octocat", "company": "@github", "public_repos": 8, "followers": 9001}
)


# --------------------------------------------------------------------------------------------
# Settings


EXTRAS = ("memory", "sse", "handshakes", "tokenizer", "mint")


@dataclass
class Settings:
    duration: float = 4.0  # seconds measured per run
    warmup: float = 1.5  # seconds of warm-up before each run (not measured)
    runs: int = 3  # runs per scenario and client mode; the median is reported
    h1_conns: int = 64  # HTTP/1.1 keep-alive: connections, one request in flight each
    h2_conns: int = 8  # HTTP/2: connections ...
    h2_streams: int = 8  # ... times concurrent streams = the same 64 in flight
    close_conns: int = 16  # a new TLS connection per request, this many at a time
    rtt_ms: float = 10.0  # the relay's simulated round trip
    spares: int = 4  # `spares: N` compared with 0 when the binary knows the key
    many_clients: int = 1000  # keep-alive clients for the memory figure
    many_duration: float = 3.0  # requests per client (one a second)
    handshakes: int = 1000  # sequential full handshakes per server
    mint_restarts: int = 10  # sidecar restarts for the first-handshake estimate
    null_modes: tuple = ("h1", "h2", "serial")  # modes run against the null tokenizer
    tls_relay_modes: tuple = ("h1", "serial")  # modes run through the TLS relay
    tokenizer_conns: int = 16  # client connections for "our tokenizer alone"
    sse_events: int = 50
    sse_gap_ms: int = 20
    sse_streams: int = 5  # streams per path, interleaved; one stream's worst event is one sample

    @classmethod
    def quick(cls):
        return cls(duration=3.0, warmup=1.0, runs=1, many_duration=3.0, handshakes=200,
                   mint_restarts=3, sse_streams=2)


# --------------------------------------------------------------------------------------------
# Processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process in its own session, output to a log file, stopped with its group."""

    def __init__(self, name, args, logdir, env=None, cwd=None):
        self.name = name
        self.log_path = Path(logdir) / f"{name}.log"
        self._log = open(self.log_path, "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.p = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                  cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL)
        self.pid = self.p.pid

    def output(self, tail=4000):
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-tail:]

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
                self.p.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self._log.close()


def wait_port(port, proc, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.p.returncode}):\n{proc.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on 127.0.0.1:{port}:\n{proc.output()}")


def wait_file(path, proc, timeout=30.0):
    deadline = time.time() + timeout
    while not path.exists():
        if not proc.alive() or time.time() > deadline:
            raise RuntimeError(f"{proc.name} did not start:\n{proc.output()}")
        time.sleep(0.05)
    return path.read_text().strip()


def sh(args, input=None, env=None, cwd=None, check=True, timeout=120):
    full_env = dict(os.environ)
    full_env.update(env or {})
    r = subprocess.run(args, input=input, capture_output=True, text=True, env=full_env, cwd=cwd,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({r.returncode}): {r.stderr.strip()}")
    return r


# --------------------------------------------------------------------------------------------
# /proc figures: CPU seconds and resident memory of a process and its children (nginx workers)


def tree(pid):
    """pid and its descendants (nginx master and workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        todo += [int(k) for k in kids]
    return out


# Seconds after the many clients left before RSS is read again: more than the sidecar's heap
# trim period (memory::TRIM_EVERY, 10 s).
AFTER_LEFT_S = 12


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def status_kb(pid, key):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pids, key="VmRSS"):
    """Sum over the processes (shared pages of nginx's workers are counted in each)."""
    return sum(status_kb(p, key) for p in pids) / 1024


def reset_peak(pids):
    """Reset VmHWM so that the next read is the peak of what follows (Linux clear_refs 5)."""
    for p in pids:
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# Little clients: one HTTPS request, SSE latency, sequential handshakes


def tls_client_ctx(alpn=("http/1.1",)):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the load generators do not verify either
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def https_get(port, name, path, headers=None, timeout=20):
    conn = http.client.HTTPConnection(name, port, timeout=timeout)
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn.sock = tls_client_ctx().wrap_socket(raw, server_hostname=name)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body.decode(errors="replace")


async def sse_probe(port, name, path, timeout=30.0):
    """Delays (s) between the upstream stamping each event and this client reading it."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls_client_ctx(), server_hostname=name)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {name}\r\nAuthorization: Bearer dummy\r\n"
        f"Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head.split(b" ", 2)[1])
    chunked = b"transfer-encoding: chunked" in head.lower()
    raw, body, delays = b"", b"", []
    while True:
        data = await asyncio.wait_for(reader.read(65536), timeout)
        now = time.time()
        if not data:
            break
        raw += data
        if chunked:  # decode as many complete chunks as we have
            while True:
                nl = raw.find(b"\r\n")
                if nl < 0:
                    break
                size = int(raw[:nl].split(b";")[0], 16)
                if len(raw) < nl + 2 + size + 2:
                    break
                body += raw[nl + 2: nl + 2 + size]
                raw = raw[nl + 2 + size + 2:]
                if size == 0:
                    raw = b""
                    break
        else:
            body, raw = body + raw, b""
        *lines, body = body.split(b"\n")
        for line in lines:
            if line.startswith(b"data: "):
                delays.append(now - json.loads(line[6:])["sent"])
    writer.close()
    return status, delays


def handshake_times(port, name, n):
    """Seconds per full TLS handshake (new TCP connection, no session resumption), sequential."""
    ctx = tls_client_ctx()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=name)
        times.append(time.perf_counter() - t0)
        s.close()
    return times


# --------------------------------------------------------------------------------------------
# h2load


@dataclass
class Mode:
    key: str
    short: str
    label: str
    args: list
    by_count: bool = False  # h2load -D hangs with Connection: close, so those runs use -n


def modes(s: Settings):
    return [
        Mode("h1", "h1 keep-alive", f"HTTP/1.1 keep-alive, {s.h1_conns} conns", ["--h1", "-c", str(s.h1_conns)]),
        Mode("h2", "h2", f"HTTP/2, {s.h2_conns} conns x {s.h2_streams} streams",
             ["-c", str(s.h2_conns), "-m", str(s.h2_streams)]),
        Mode("close", "new conn per request", f"new TLS conn per request, {s.close_conns} at a time",
             ["--h1", "-c", str(s.close_conns), "-H", "Connection: close"], by_count=True),
        Mode("serial", "serial (unloaded)", "HTTP/1.1 keep-alive, 1 conn (unloaded latency)", ["--h1", "-c", "1"]),
    ]


H2LOAD_RE = {
    "elapsed": re.compile(r"finished in ([\d.]+)(ms|s),"),
    "requests": re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                           r"(\d+) failed, (\d+) errored, (\d+) timeout"),
    "codes": re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx"),
}


def h2load(port, extra, log=None, timeout=120, on_main=None, url=None):
    """Run h2load against https://api.github.com:PORT/user (dialling 127.0.0.1), or `url` with
    no extra headers, and parse it.

    With --warm-up-time, h2load prints a line when the measured phase starts and one when it
    ends (flushed as they happen); on_main(phase) is called at each ("start", "end"), and the
    measured phase's length is timed between them.
    """
    args = (["h2load", *extra, url] if url else
            ["h2load", "--connect-to", f"127.0.0.1:{port}", "-H", "Authorization: Bearer dummy",
             *extra, f"https://{HOST}:{port}/user"])
    if log:
        log.unlink(missing_ok=True)
        args[1:1] = ["--log-file", str(log)]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timed_out = []
    timer = threading.Timer(timeout, lambda: (timed_out.append(1), p.kill()))
    timer.start()
    lines, marks = [], {}
    for line in p.stdout:
        lines.append(line)
        for phase, text in (("start", "Main benchmark duration is started"),
                            ("end", "Main benchmark duration is over")):
            if text in line and phase not in marks:
                marks[phase] = time.monotonic()
                if on_main:
                    on_main(phase)
    p.wait()
    timer.cancel()
    out = "".join(lines)
    if timed_out:
        return {"error": f"h2load timed out after {timeout:g}s", "ok": 0, "done": 0, "bad": 0,
                "elapsed": timeout, "out": out}
    m = H2LOAD_RE["elapsed"].search(out)
    rq = H2LOAD_RE["requests"].search(out)
    codes = H2LOAD_RE["codes"].search(out)
    if not (m and rq and codes):
        return {"error": "h2load: " + out.strip()[-300:], "ok": 0, "done": 0, "bad": 0,
                "elapsed": 1, "out": out}
    elapsed = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    if "start" in marks and "end" in marks:
        elapsed = marks["end"] - marks["start"]
    total, _, done, ok, failed, errored, tmo = map(int, rq.groups())
    c2, c3, c4, c5 = map(int, codes.groups())
    res = {"elapsed": elapsed, "done": done, "ok": c2, "bad": failed + errored + tmo + c4 + c5,
           "codes": (c2, c3, c4, c5), "out": out}
    if log and log.exists():
        lat = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines()
                     if line.count("\t") == 2 and line.split("\t")[1].startswith("2"))
        res["lat_us"] = lat
    return res


def dur(seconds):
    """h2load's duration syntax."""
    return f"{int(round(seconds * 1000))}ms"


def pct(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


# --------------------------------------------------------------------------------------------
# The setup


@dataclass
class Scenario:
    key: str
    label: str
    port: int
    pids: callable = None  # -> the sidecar's pids (None: direct, there is no sidecar)
    note: str = ""
    modes: tuple = None  # client modes this scenario runs (None: all)
    check: bool = True  # /_check: the upstream must see the real token
    results: dict = field(default_factory=dict)  # mode key -> list of per-run dicts


class Bench:
    def __init__(self, s: Settings, a):
        self.s = s
        self.a = a
        self.work = Path(tempfile.mkdtemp(prefix="pp-bench-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.procs = []
        self.meta = {}
        self.extra = {}

    # -- plumbing ------------------------------------------------------------------------------

    def start(self, name, args, env=None, cwd=None):
        p = Proc(name, args, self.logs, env=env, cwd=cwd)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    def check_alive(self):
        """Stop with a clear message if a server died (say, killed by another job's pkill)."""
        dead = [p for p in self.procs if not p.alive()]
        if dead:
            rc = lambda p: (f"killed by signal {-p.p.returncode}"  # noqa: E731
                            if p.p.returncode < 0 else f"exit {p.p.returncode}")
            why = ", ".join(f"{p.name} ({rc(p)})" for p in dead)
            raise RuntimeError(f"stopped: {why} during the run; see the logs in {self.logs} "
                               "(run with --keep)\n" + dead[0].output(1500))

    def say(self, msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # -- keys and certificates ----------------------------------------------------------------

    def prepare(self):
        src = Path(self.a.bin)
        if not src.exists():
            sys.exit(f"{src} is missing: run `make build` (make bench does)")
        # A private copy: a rebuild of target/ during the run must not swap the binary.
        (self.work / "bin").mkdir()
        self.bin = str(self.work / "bin" / "proxypilot")
        shutil.copy2(src, self.bin)
        self.meta["bin_sha256"] = hashlib.sha256(Path(self.bin).read_bytes()).hexdigest()[:12]

        pki = self.work / "pki"
        pki.mkdir()
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        sh(["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=proxypilot bench CA", "-addext", "basicConstraints=critical,CA:TRUE"],
           cwd=pki)
        sh(["openssl", "req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr",
            "-subj", f"/CN={HOST}"], cwd=pki)
        (pki / "ext.cnf").write_text(
            f"subjectAltName=DNS:{HOST},DNS:{SSE_HOST},DNS:localhost\n"
            "extendedKeyUsage=serverAuth\n")
        sh(["openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "ext.cnf"], cwd=pki)
        (pki / "combined.pem").write_text((pki / "leaf.key").read_text()
                                          + (pki / "leaf.pem").read_text())
        self.pki = pki

        kv = dict(line.split("=", 1) for line in sh([self.bin, "keygen"]).stdout.split())
        self.open_key, seal_key = kv["OPEN_KEY"], kv["SEAL_KEY"]
        seal = lambda host: sh([self.bin, "seal", "--host", host], input=REAL_TOKEN,  # noqa
                               env={"SEAL_KEY": seal_key}).stdout.strip()
        self.sealed = {HOST: seal(HOST), SSE_HOST: seal(SSE_HOST)}

    # -- the servers ----------------------------------------------------------------------------

    def nginx(self, name, server_blocks, workers):
        d = self.work / name
        (d / "tmp").mkdir(parents=True)
        os.chmod(d / "tmp", 0o1777)
        conf = d / "nginx.conf"
        conf.write_text(f"""\
worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_certificate {self.pki}/leaf.pem;
  ssl_certificate_key {self.pki}/leaf.key;
{server_blocks}
}}
""")
        p = self.start(name, ["nginx", "-e", str(d / "error.log"), "-p", str(d), "-c", str(conf)])
        return p

    def start_upstream(self):
        """nginx: the fast HTTPS upstream, plus /_check that echoes what reached it."""
        port = free_port()
        body = BODY.replace("'", "\\'")
        self.up_port = port
        self.null_port = free_port()
        self.upstream = self.nginx("upstream", f"""\
  # The null tokenizer: plain HTTP, answers every request itself (isolates the sidecar).
  server {{
    listen 127.0.0.1:{self.null_port};
    location / {{ default_type application/json; return 200 '{body}'; }}
  }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    server_name {HOST};
    location = /_check {{
      default_type text/plain;
      return 200 "auth=$http_authorization|tokenizer=$http_proxy_tokenizer|host=$host";
    }}
    location / {{ default_type application/json; return 200 '{body}'; }}
  }}""", workers=1)
        wait_port(port, self.upstream)

        # The Python upstream for server-sent events (timestamps each event it sends).
        ready = self.work / "sse-upstream.port"
        p = self.start("sse-upstream", [
            sys.executable, str(ROOT / "tests" / "e2e" / "upstream.py"),
            "--cert", str(self.pki / "leaf.pem"), "--key", str(self.pki / "leaf.key"),
            "--log", str(self.work / "sse-upstream.jsonl"), "--ready", str(ready)])
        self.sse_up_port = int(wait_file(ready, p))

    def start_tokenizer(self):
        port = free_port()
        self.tok_port = port
        self.tokenizer = self.start("tokenizer", [
            self.bin, "tokenizer", "--listen", f"127.0.0.1:{port}",
            "--upstream-ca", str(self.pki / "ca.pem"),
            "--connect-to", f"{HOST}:443:127.0.0.1:{self.up_port}",
            "--connect-to", f"{SSE_HOST}:443:127.0.0.1:{self.sse_up_port}",
            "--threads", "2"], env={"OPEN_KEY": self.open_key, "RUST_LOG": self.a.rust_log})
        wait_port(port, self.tokenizer)

    def sidecar_yaml(self, name, port, tokenizer_port, spares=None, extra="", tls=False):
        d = self.work / name
        d.mkdir(exist_ok=True)
        spares_line = f"\n    spares: {spares}" if spares is not None else ""
        url = f"http://127.0.0.1:{tokenizer_port}"
        if tls:  # an https:// tokenizer with a certificate from the bench CA
            url = f"https://localhost:{tokenizer_port}"
            spares_line += f"\n    ca: {self.pki / 'ca.pem'}"
        pingora_lines = "".join(f"\n{k}" for k in self.a.pingora)
        conf = d / "proxy.yaml"
        conf.write_text(f"""\
version: 1
threads: {self.a.threads}
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1{pingora_lines}
proxypilot:
  listen: ["127.0.0.1:{port}"]{extra}
  ca:
    cert: {d}/ca/ca.pem
    key: {d}/ca/ca-key.pem
  tokenizer:
    url: {url}{spares_line}
  routes:
    - host: {HOST}
      secret_env: PP_SEALED_GITHUB
    - host: {SSE_HOST}
      secret_env: PP_SEALED_ANTHROPIC
""")
        return conf

    def sidecar_env(self):
        return {"PP_SEALED_GITHUB": self.sealed[HOST], "PP_SEALED_ANTHROPIC": self.sealed[SSE_HOST],
                "RUST_LOG": self.a.rust_log}

    def start_sidecar(self, name, tokenizer_port, spares=None, extra="", tls=False):
        port = free_port()
        conf = self.sidecar_yaml(name, port, tokenizer_port, spares, extra, tls)
        p = self.start(name, [self.bin, "serve", "-c", str(conf)], env=self.sidecar_env())
        wait_port(port, p)
        return p, port

    def spares_supported(self):
        """Does this binary know `proxypilot.tokenizer.spares`? (unknown keys are refused)"""
        conf = self.sidecar_yaml("spares-check", free_port(), self.tok_port, spares=1)
        r = sh([self.bin, "serve", "-t", "-c", str(conf)], env=self.sidecar_env(), check=False)
        return r.returncode == 0

    def start_nginx_sidecar(self, name="nginx-sidecar", tokenizer_port=None):
        port = free_port()
        blocks = [f"""\
  upstream tokenizer {{
    server 127.0.0.1:{tokenizer_port or self.tok_port};
    keepalive 32;
  }}"""]
        for host in (HOST, SSE_HOST):
            blocks.append(f"""\
  server {{
    listen 127.0.0.1:{port} ssl http2;
    server_name {host};
    location / {{
      proxy_pass http://tokenizer;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host {host};
      proxy_set_header Authorization "";
      proxy_set_header Proxy-Tokenizer "{self.sealed[host]}";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}""")
        p = self.nginx(name, "\n".join(blocks), workers=2)
        wait_port(port, p)
        return p, port

    def start_mitmproxy(self):
        port = free_port()
        env = {"PP_SEALED_" + h.upper().replace(".", "_"): v for h, v in self.sealed.items()}
        p = self.start("mitmproxy", [
            self.a.mitmdump, "-q", "--mode", f"reverse:http://127.0.0.1:{self.tok_port}/",
            "--listen-host", "127.0.0.1", "--listen-port", str(port),
            "--certs", f"*={self.pki / 'combined.pem'}",
            "--set", f"confdir={self.work / 'mitmproxy'}", "--set", "flow_detail=0",
            "--set", "connection_strategy=lazy", "--set", "stream_large_bodies=1",
            "-s", str(BENCH / "mitm_addon.py")], env=env)
        wait_port(port, p, timeout=90)
        return p, port

    def start_relay(self, tls=False):
        name = "relay-tls" if tls else "relay"
        ready = self.work / f"{name}.port"
        tls_args = ["--tls-cert", str(self.pki / "leaf.pem"),
                    "--tls-key", str(self.pki / "leaf.key")] if tls else []
        p = self.start(name, [sys.executable, str(BENCH / "relay.py"),
                              "--target", f"127.0.0.1:{self.tok_port}",
                              "--rtt-ms", str(self.s.rtt_ms), "--ready", str(ready), *tls_args])
        return p, int(wait_file(ready, p))

    # -- checks ---------------------------------------------------------------------------------

    def check(self, scn):
        """Each path must deliver the real token (and no Proxy-Tokenizer) to the upstream."""
        status, body = https_get(scn.port, HOST, "/_check",
                                 {"Authorization": "Bearer dummy", "Host": HOST})
        want = f"auth=Bearer {REAL_TOKEN}|tokenizer=|host={HOST}"
        if scn.key == "direct":
            want = f"auth=Bearer dummy|tokenizer=|host={HOST}"
        if status != 200 or body != want:
            raise RuntimeError(f"{scn.label}: /_check gave {status} {body!r}, want {want!r}")

    # -- load -------------------------------------------------------------------------------------

    def timed_load(self, port, args, groups, by_count, warm_n, url=None, log=None):
        """One h2load run with the warm-up left out. Returns h2load's parsed output, the rates
        and percentiles of the measured part, and each pid group's CPU seconds per 10k answers.

        By count when the server closes every connection (h2load -D does not finish then): a
        warm-up of `warm_n` requests, then as many as the warm-up rate gives in `duration`,
        timed by h2load. Otherwise one h2load: connections made and warmed up, then `duration`
        measured on them."""
        s = self.s
        tmo = s.duration * 6 + s.warmup * 6 + 60
        cpu = {}

        def mark(phase):
            cpu[phase] = [cpu_seconds(g) for g in groups]

        if by_count:
            w = h2load(port, args + ["-n", str(warm_n)], url=url, timeout=tmo)
            rate = w["ok"] / max(w["elapsed"], 1e-3) if not w.get("error") else 50
            mark("start")
            r = h2load(port, args + ["-n", str(max(warm_n, int(rate * s.duration)))],
                       url=url, log=log, timeout=tmo)
            mark("end")
        else:
            r = h2load(port, args + ["--warm-up-time", dur(s.warmup), "-D", dur(s.duration)],
                       url=url, log=log, timeout=tmo, on_main=mark)
        ok = r["ok"]
        used = ([b - a for a, b in zip(cpu["start"], cpu["end"])]
                if "start" in cpu and "end" in cpu else [0.0] * len(groups))
        stats = {
            "rps": ok / r["elapsed"] if r["elapsed"] else 0.0,
            "p50": pct(r.get("lat_us", []), 0.50) / 1000,
            "p99": pct(r.get("lat_us", []), 0.99) / 1000,
            "n": ok,
            "bad": r["bad"],
            "error": r.get("error"),
        }
        return r, stats, [u / ok * 10000 if ok else None for u in used]

    def measure(self, scn: Scenario, mode: Mode):
        s = self.s
        pids = tree(scn.pids()) if scn.pids else []
        reset_peak(pids)
        r, res, (cpu10k, tok10k) = self.timed_load(
            scn.port, mode.args, [pids, tree(self.tokenizer.pid)], mode.by_count,
            warm_n=max(4 * s.close_conns, int(s.warmup * 150)), log=self.work / "h2load.log")
        res["cpu10k"] = cpu10k if pids else None
        res["tok10k"] = tok10k if scn.check and scn.key != "direct" else None
        res["hwm"] = rss_mib(pids, "VmHWM") if pids else None
        if r["bad"] or r.get("error") or not r["ok"]:
            (self.logs / "h2load-errors.log").open("a").write(
                f"--- {scn.key} {mode.key}\n{r['out'][-3000:]}\n")
        return res

    # -- the run ----------------------------------------------------------------------------------

    def run(self):
        s, a = self.s, self.a
        t_start = time.time()
        self.meta["load_before"] = os.getloadavg()
        self.prepare()
        self.say(f"workdir {self.work}")
        self.start_upstream()
        self.start_tokenizer()
        pp, pp_port = self.start_sidecar("proxypilot", self.tok_port)
        ng, ng_port = self.start_nginx_sidecar()
        scns = [
            Scenario("direct", "direct (client -> upstream)", self.up_port),
            Scenario("proxypilot", "proxypilot", pp_port, pids=lambda: pp.pid),
            Scenario("nginx", "nginx as sidecar", ng_port, pids=lambda: ng.pid),
        ]
        if not a.no_mitmproxy:
            mp, mp_port = self.start_mitmproxy()
            scns.append(Scenario("mitmproxy", "mitmproxy as sidecar", mp_port,
                                 pids=lambda: mp.pid))
        relay, relay_port = self.start_relay()
        self.spares = self.spares_supported()
        spares_variants = [0, s.spares] if self.spares else [None]
        for n in spares_variants:
            name = "relay" + ("" if n is None else f"-spares{n}")
            p, port = self.start_sidecar(name, relay_port, spares=n)
            note = "spares: not implemented yet" if n is None else f"spares: {n}"
            scns.append(Scenario(name, f"proxypilot via relay ({s.rtt_ms:g} ms RTT, close)",
                                 port, pids=(lambda p=p: p.pid), note=note))
        if self.spares:
            # The same behind TLS: an https:// tokenizer, where a spare also saves TLS's round trip.
            _, tls_relay_port = self.start_relay(tls=True)
            for n in (0, s.spares):
                name = f"relaytls-spares{n}"
                p, port = self.start_sidecar(name, tls_relay_port, spares=n, tls=True)
                scns.append(Scenario(
                    name, f"proxypilot via TLS relay (https tokenizer, {s.rtt_ms:g} ms RTT, close)",
                    port, pids=(lambda p=p: p.pid), note=f"spares: {n}", modes=s.tls_relay_modes))
        if s.null_modes:
            ppn, ppn_port = self.start_sidecar("proxypilot-null", self.null_port)
            ngn, ngn_port = self.start_nginx_sidecar("nginx-null", self.null_port)
            note = "sidecar alone: the tokenizer is replaced by a static answer"
            scns += [
                Scenario("null-proxypilot", "proxypilot, null tokenizer", ppn_port,
                         pids=lambda: ppn.pid, note=note, modes=s.null_modes, check=False),
                Scenario("null-nginx", "nginx as sidecar, null tokenizer", ngn_port,
                         pids=lambda: ngn.pid, note=note, modes=s.null_modes, check=False),
            ]
        if a.only:
            keep = set(a.only.split(","))
            scns = [c for c in scns if c.key in keep or c.key.split("-")[0] in keep]
        ms = [m for m in modes(s) if not a.modes or m.key in a.modes.split(",")]

        for scn in scns:
            if scn.check:
                self.check(scn)
        self.say("every path delivers the real token to the upstream (checked via /_check)")

        # Idle memory: after start and one request, before any load.
        idle = {}
        for key, proc in (("proxypilot", pp), ("nginx", ng), ("tokenizer", self.tokenizer)) + (
                () if a.no_mitmproxy else (("mitmproxy", mp),)):
            idle[key] = rss_mib(tree(proc.pid))
        self.extra["idle"] = idle

        # The load matrix, interleaved: run i of every scenario and mode before run i+1.
        for i in range(s.runs):
            for mode in ms:
                for scn in scns:
                    if scn.modes is not None and mode.key not in scn.modes:
                        continue
                    r = self.measure(scn, mode)
                    self.check_alive()
                    scn.results.setdefault(mode.key, []).append(r)
                    flag = f" ERRORS={r['bad']}" if r["bad"] else ""
                    flag += f" ({r['error']})" if r["error"] else ""
                    self.say(f"run {i + 1}/{s.runs} {mode.key:6} {scn.key:24} "
                             f"{r['rps']:9.0f} req/s  p50 {r['p50']:7.2f} ms  "
                             f"p99 {r['p99']:7.2f} ms{flag}")

        want = set(EXTRAS if not a.extras else a.extras.split(",")) - (
            set(EXTRAS) if a.skip_extras else set())
        if "memory" in want:
            self.check_alive()
            self.many_clients([c for c in scns if c.key in ("proxypilot", "nginx", "mitmproxy")])
        if "sse" in want:
            self.sse({"direct": self.sse_up_port, "proxypilot": pp_port, "nginx": ng_port,
                      **({} if a.no_mitmproxy else {"mitmproxy": mp_port})})
        self.check_alive()
        if "handshakes" in want:
            self.handshakes(pp_port, ng_port)
        if "tokenizer" in want:
            self.tokenizer_alone()
        if "mint" in want:
            self.mint_estimate()
            self.ca_bench()
        self.meta["load_after"] = os.getloadavg()
        self.meta["elapsed"] = time.time() - t_start
        self.scns, self.modes = scns, ms

    def many_clients(self, scns):
        out = {}
        n = self.s.many_clients
        for scn in scns:
            pids = tree(scn.pids())
            reset_peak(pids)
            # Every client keeps its connection and sends one request a second, `many_duration`
            # times (by count: h2load's --rps with -D does not finish).
            per = max(1, int(self.s.many_duration))
            r = h2load(scn.port, ["--h1", "-c", str(n), "--rps", "1", "-n", str(n * per)],
                       timeout=self.s.many_duration * 10 + 120)
            out[scn.key] = {"hwm": rss_mib(pids, "VmHWM"), "pids": pids, "ok": r["ok"],
                            "bad": r["bad"], "error": r.get("error")}
            self.say(f"{n} keep-alive clients via {scn.key}: peak RSS {out[scn.key]['hwm']:.1f} "
                     f"MiB, {r['ok']} ok, {r['bad']} failed")
        # What each process gives back once the clients are gone: read after proxypilot's
        # periodic heap trim has had its turn.
        time.sleep(AFTER_LEFT_S)
        for v in out.values():
            v["rss"] = rss_mib(v.pop("pids"))
        self.extra["many"] = out

    def sse(self, ports):
        """`sse_streams` streams per path, the paths taken in turn each round so that a busy
        moment of the host hits them alike. The worst event of one stream is one sample: the
        table gives the median of those per-stream worsts, and the worst of all."""
        path = f"/sse?n={self.s.sse_events}&gap_ms={self.s.sse_gap_ms}"
        runs = {key: [] for key in ports}
        for _ in range(self.s.sse_streams):
            for key, port in ports.items():
                try:
                    status, delays = asyncio.run(sse_probe(port, SSE_HOST, path))
                    runs[key].append({"status": status, "delays": delays})
                except Exception as e:  # report, do not abort the run
                    runs[key].append({"status": 0, "delays": [], "error": repr(e)})
        out = {}
        for key, rs in runs.items():
            every = [d * 1000 for r in rs for d in r["delays"]]
            worsts = [max(r["delays"]) * 1000 for r in rs if r["delays"]]
            nan = float("nan")
            out[key] = {"status": max(r["status"] for r in rs), "streams": len(worsts),
                        "n": len(every), "p50": statistics.median(every) if every else nan,
                        "worst_med": statistics.median(worsts) if worsts else nan,
                        "max": max(worsts) if worsts else nan,
                        "error": next((r["error"] for r in rs if r.get("error")), None)}
            self.say(f"SSE via {key}: {out[key]}")
        self.extra["sse"] = out

    def tokenizer_alone(self):
        """Our tokenizer alone (client -> tokenizer -> upstream over TLS), keep-alive against a
        new connection per request, the reference tokenizer's behaviour (`--close-connections`):
        same requests, same run, interleaved, median of `runs`."""
        s = self.s
        close_port = free_port()
        tclose = self.start("tokenizer-close", [
            self.bin, "tokenizer", "--listen", f"127.0.0.1:{close_port}",
            "--upstream-ca", str(self.pki / "ca.pem"),
            "--connect-to", f"{HOST}:443:127.0.0.1:{self.up_port}",
            "--threads", "2", "--close-connections"],
            env={"OPEN_KEY": self.open_key, "RUST_LOG": self.a.rust_log})
        wait_port(close_port, tclose)
        hdrs = ["-H", f":authority: {HOST}", "-H", f"Proxy-Tokenizer: {self.sealed[HOST]}"]
        rows = [  # key, port, process, client args, by count (the server closes)
            ("keep-alive", self.tok_port, self.tokenizer, ["-c", str(s.tokenizer_conns)], False),
            ("new connection per request (--close-connections)", close_port, tclose,
             ["-c", str(s.tokenizer_conns), "-H", "Connection: close"], True),
            ("keep-alive, 1 client (unloaded)", self.tok_port, self.tokenizer, ["-c", "1"], False),
            ("new connection per request, 1 client (unloaded)", close_port, tclose,
             ["-c", "1", "-H", "Connection: close"], True),
        ]
        log = self.work / "h2load-tokenizer.log"
        out = {}
        for i in range(s.runs):
            for key, port, proc, args, by_count in rows:
                _, res, (cpu10k,) = self.timed_load(
                    port, ["--h1", *hdrs, *args], [tree(proc.pid)], by_count,
                    warm_n=max(100, int(s.warmup * 500)), url=f"http://127.0.0.1:{port}/user",
                    log=log)
                res["cpu10k"] = cpu10k
                out.setdefault(key, []).append(res)
                self.say(f"run {i + 1}/{s.runs} tokenizer alone, {key}: {res['rps']:.0f} req/s "
                         f"p50 {res['p50']:.2f} ms p99 {res['p99']:.2f} ms"
                         + (f" ERRORS={res['bad']}" if res["bad"] else "")
                         + (f" ({res['error']})" if res["error"] else ""))
        tclose.stop()
        self.extra["tokenizer"] = {
            k: {f: statistics.median([x[f] for x in v if x[f] is not None] or [float("nan")])
                for f in ("rps", "p50", "p99", "cpu10k")} | {"bad": sum(x["bad"] for x in v)}
            for k, v in out.items()}

    def handshakes(self, pp_port, ng_port):
        n = self.s.handshakes
        out = {}
        # Always-new certificates: a 1 s leaf lifetime is already past its renewal point (leaves
        # are backdated 5 min), so this sidecar mints a fresh leaf for every handshake.
        mint, mint_port = self.start_sidecar("proxypilot-mint-every", self.tok_port,
                                             extra="\n  leaf_lifetime: 1s")
        for key, port in (("proxypilot (minted, cached)", pp_port),
                          ("proxypilot (new leaf minted every handshake)", mint_port),
                          ("nginx sidecar (static cert)", ng_port),
                          ("nginx upstream (static cert)", self.up_port)):
            handshake_times(port, HOST, 20)  # warm-up
            t = sorted(handshake_times(port, HOST, n))
            out[key] = {"p50": pct(t, 0.5) * 1000, "p99": pct(t, 0.99) * 1000,
                        "rate": len(t) / sum(t)}
            self.say(f"handshakes {key}: median {out[key]['p50']:.3f} ms")
        mint.stop()
        self.extra["handshakes"] = out

    def ca_bench(self):
        """`proxypilot ca bench`: minting timed inside the binary (if this build has it)."""
        r = sh([self.bin, "ca", "bench", "--count", "1000"], check=False)
        self.extra["ca_bench"] = (r.stdout + r.stderr).strip().splitlines()[-1] if (
            r.returncode == 0) else None
        self.say(f"ca bench: {self.extra['ca_bench']}")

    def mint_estimate(self):
        """Over restarts: a first handshake for `localhost` warms the fresh process (and mints
        that name), then the first one for api.github.com mints its leaf; minus a cached one."""
        diffs, firsts = [], []
        for i in range(self.s.mint_restarts):
            p, port = self.start_sidecar(f"mint-{i}", self.tok_port)
            handshake_times(port, "localhost", 1)
            first = handshake_times(port, HOST, 1)[0]
            cached = statistics.median(handshake_times(port, HOST, 9))
            p.stop()
            self.procs.remove(p)
            firsts.append(first * 1000)
            diffs.append((first - cached) * 1000)
        self.extra["mint"] = {"n": len(diffs), "first": statistics.median(firsts),
                              "diff": statistics.median(diffs)}
        self.say(f"first handshake for a name: {self.extra['mint']}")


# --------------------------------------------------------------------------------------------
# Report


def med(values):
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def fmt(v, spec=".1f", none="–"):
    return none if v is None or v != v else format(v, spec)


def versions(a):
    def first_line(args):
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=30)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:
            return f"unavailable ({e.__class__.__name__})"

    rev = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src",
                            "Cargo.toml", "Cargo.lock"], capture_output=True, text=True).stdout
    return {
        "proxypilot": first_line([a.bin, "--version"]).replace("proxypilot ", "") + f" (git {rev}"
                      + (", src/ had uncommitted changes)" if dirty.strip() else ")"),
        "nginx": first_line(["nginx", "-v"]).replace("nginx version: ", ""),
        "mitmproxy": first_line([a.mitmdump, "--version"]).replace("Mitmproxy: ", "mitmproxy ")
                     if not a.no_mitmproxy else "mitmproxy not run",
        "h2load": first_line(["h2load", "--version"]).replace("h2load ", ""),
        "openssl": first_line(["openssl", "version"]),
        "python": platform.python_version(),
    }


def machine():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:10]
    # Scale: how fast this CPU signs and agrees keys (what TLS handshakes and unsealing cost).
    speed = subprocess.run(["openssl", "speed", "-seconds", "1", "ecdsap256", "ecdhx25519"],
                           capture_output=True, text=True).stdout.splitlines()
    lscpu += ["", "openssl speed -seconds 1 ecdsap256 ecdhx25519:"] + [
        l for l in speed if re.search(r"(sign|op)\s*(verify|op/s)|nistp256|X25519", l)]
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "lscpu": lscpu,
            "mem": f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB"}


def report(b: Bench, command):
    s, a = b.s, b.a
    L = []
    add = L.append
    by = {c.key: c for c in b.scns}
    direct = by.get("direct")

    add("| scenario | client | req/s (min–max) | p50 ms | p99 ms | +p50 vs direct ms | "
        "sidecar peak RSS MiB | sidecar CPU s/10k req | tokenizer CPU s/10k req | errors | note |")
    add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    summary = {}
    for mode in b.modes:
        for c in b.scns:
            runs = c.results.get(mode.key, [])
            if not runs:
                continue
            rps = [r["rps"] for r in runs]
            row = {k: med([r[k] for r in runs]) for k in ("rps", "p50", "p99", "cpu10k", "tok10k")}
            row["hwm"] = max((r["hwm"] for r in runs if r["hwm"] is not None), default=None)
            row["bad"] = sum(r["bad"] for r in runs)
            summary[(c.key, mode.key)] = row
            dp50 = None
            if direct and direct.results.get(mode.key) and c is not direct:
                d = med([r["p50"] for r in direct.results[mode.key]])
                dp50 = row["p50"] - d if row["p50"] is not None and d is not None else None
            spread = f" ({min(rps):,.0f}–{max(rps):,.0f})" if len(rps) > 1 else ""
            errs = str(row["bad"]) + (" (" + "; ".join(sorted({r["error"] for r in runs
                                                               if r["error"]})) + ")"
                                      if any(r["error"] for r in runs) else "")
            add(f"| {c.label} | {mode.key} | {fmt(row['rps'], ',.0f')}{spread} | {fmt(row['p50'], '.2f')}"
                f" | {fmt(row['p99'], '.2f')} | {fmt(dp50, '+.2f')} | {fmt(row['hwm'])} | "
                f"{fmt(row['cpu10k'], '.2f')} | {fmt(row['tok10k'], '.2f')} | {errs} | {c.note} |")
    table = "\n".join(L)

    R = []
    for other in ("nginx", "mitmproxy"):
        for mode in b.modes:
            p, o = summary.get(("proxypilot", mode.key)), summary.get((other, mode.key))
            if not (p and o):
                continue
            tput = p["rps"] / o["rps"] if o["rps"] else float("nan")
            lat = p["p50"] / o["p50"] if o["p50"] else float("nan")
            cpu = (p["cpu10k"] / o["cpu10k"]) if p["cpu10k"] and o["cpu10k"] else float("nan")
            R.append(f"- proxypilot/{other} {mode.short}: throughput {tput:.2f}x, "
                     f"p50 latency {lat:.2f}x, sidecar CPU per request {cpu:.2f}x")
    for mode in b.modes:
        p, o = summary.get(("null-proxypilot", mode.key)), summary.get(("null-nginx", mode.key))
        if p and o:
            R.append(f"- sidecar alone (null tokenizer), proxypilot/nginx {mode.short}: throughput "
                     f"{p['rps'] / o['rps']:.2f}x, p50 latency {p['p50'] / o['p50']:.2f}x, "
                     f"sidecar CPU per request {p['cpu10k'] / o['cpu10k']:.2f}x")
    for prefix, what in (("relay-spares", "relay"), ("relaytls-spares", "TLS relay")):
        with_spares = [c.key for c in b.scns if c.key.startswith(prefix)]
        if len(with_spares) != 2:
            continue
        for mode in b.modes:
            z, n = summary.get((with_spares[0], mode.key)), summary.get((with_spares[1], mode.key))
            if z and n:
                R.append(f"- {what} with {with_spares[1][len(prefix):]} spares / without, "
                         f"{mode.short}: throughput {n['rps'] / z['rps']:.2f}x, p50 "
                         f"{n['p50']:.2f} ms vs {z['p50']:.2f} ms")
    ratios = "\n".join(R)

    X = []
    if "idle" in b.extra:
        X.append("Memory (RSS, MiB; nginx = master + workers, shared pages counted per process):")
        X.append("")
        X.append("| process | idle (after start + 1 request) | peak with "
                 f"{s.many_clients} keep-alive clients | {AFTER_LEFT_S} s after they left | "
                 "requests ok / failed |")
        X.append("|---|---:|---:|---:|---|")
        for k, v in b.extra["idle"].items():
            m = b.extra.get("many", {}).get(k)
            X.append(f"| {k} | {v:.1f} | {fmt(m and m['hwm'])} | {fmt(m and m['rss'])} | "
                     + (f"{m['ok']} / {m['bad']}" + (f" ({m['error']})" if m['error'] else "")
                        if m else "–") + " |")
        X.append("")
    if "sse" in b.extra:
        X.append(f"Server-sent events ({s.sse_events} events, {s.sse_gap_ms} ms apart, from the "
                 "Python upstream): delay from the upstream stamping an event to the client "
                 "reading it.")
        X.append("")
        X.append("| path | status | streams | events | median ms | worst event of a stream, "
                 "median over streams ms | worst event of all ms |")
        X.append("|---|---:|---:|---:|---:|---:|---:|")
        for k, v in b.extra["sse"].items():
            X.append(f"| {k} | {v['status']} | {v['streams']} | {v['n']} | "
                     f"{fmt(v['p50'], '.2f')} | {fmt(v['worst_med'], '.2f')} | "
                     f"{fmt(v['max'], '.2f')} |" + (f" {v['error']}" if v.get("error") else ""))
        X.append("")
    if "handshakes" in b.extra:
        X.append(f"Full TLS handshakes, one at a time ({s.handshakes} each, new TCP connection, "
                 f"no resumption, SNI {HOST}, client = Python ssl):")
        X.append("")
        X.append("| server | median ms | p99 ms | handshakes/s |")
        X.append("|---|---:|---:|---:|")
        for k, v in b.extra["handshakes"].items():
            X.append(f"| {k} | {v['p50']:.3f} | {v['p99']:.3f} | {v['rate']:,.0f} |")
        X.append("")
    if "tokenizer" in b.extra:
        X.append(f"Our tokenizer alone (h2load over HTTP/1.1 -> `proxypilot tokenizer` -> the "
                 f"upstream over pooled TLS; origin-form with `Host: {HOST}` and the sealed "
                 f"secret; {s.tokenizer_conns} client connections, or 1), keep-alive against a new "
                 "connection per request like the reference tokenizer (`--close-connections`, "
                 "client sends `Connection: close`). h2load times a request from writing it, so the p50 "
                 "of a new-connection row leaves out the TCP connect; req/s includes it.")
        X.append("")
        X.append("| client connections | req/s | p50 ms | p99 ms | tokenizer CPU s/10k req | errors |")
        X.append("|---|---:|---:|---:|---:|---:|")
        for k, v in b.extra["tokenizer"].items():
            X.append(f"| {k} | {v['rps']:,.0f} | {v['p50']:.2f} | {v['p99']:.2f} | "
                     f"{fmt(v['cpu10k'], '.2f')} | {v['bad']} |")
        t = b.extra["tokenizer"]
        pairs = (("keep-alive", "new connection per request (--close-connections)"),
                 ("keep-alive, 1 client (unloaded)",
                  "new connection per request, 1 client (unloaded)"))
        for ka, cl in pairs:
            if ka in t and cl in t and t[cl]["rps"]:
                X.append(f"- {ka} / new connection per request: throughput "
                         f"{t[ka]['rps'] / t[cl]['rps']:.2f}x, p50 {t[ka]['p50']:.2f} vs "
                         f"{t[cl]['p50']:.2f} ms")
        X.append("")
    if "mint" in b.extra:
        m = b.extra["mint"]
        X.append(f"Minting, seen from outside: the first handshake for {HOST} after a sidecar "
                 f"start (the process warmed up by a handshake for `localhost` first) took "
                 f"median {m['first']:.2f} ms, {m['diff']:+.2f} ms over a cached handshake for "
                 f"the same name (median of {m['n']} restarts): roughly the time to mint one "
                 "leaf. Only routed names get a certificate, so always-new names are measured "
                 "with a sidecar whose 1 s leaf lifetime makes it mint a new leaf on every "
                 "handshake (the row above); the cached row is the steady state.")
        X.append("")
    if "ca_bench" in b.extra:
        X.append("Minting, timed inside the binary (`proxypilot ca bench --count 1000`): "
                 + (b.extra["ca_bench"] or "not available in this build") + ".")
        X.append("")
    extras = "\n".join(X)
    return table, ratios, extras


def markdown(b: Bench, command, table, ratios, extras):
    s, a = b.s, b.a
    v = versions(a)
    mc = machine()
    lb, la = b.meta["load_before"], b.meta["load_after"]
    quiet = lb[0] < 0.5
    spares = ("This binary accepts `proxypilot.tokenizer.spares`, so the relay scenario runs "
              f"with `spares: 0` and `spares: {s.spares}`") if b.spares else (
        "Spares: not implemented yet (this binary refuses `proxypilot.tokenizer.spares`); the "
        f"script compares 0 with `--spares {s.spares}` once it does")
    return f"""# Benchmarks

Generated by `make bench` (`bench/bench.py`); rerun it to refresh this file. Do not edit by hand.

{"" if quiet else f'''> **Noisy numbers.** The machine was busy when this run started (1-minute load
> average {lb[0]:.2f} on {mc["nproc"]} CPUs): other work shared its cores. Compare rows of this
> run with each other only, and rerun `make bench` on a quiet machine for figures to quote.
'''}
- Command: `{command}` (what `make bench` runs after building the release binary and
  running `scripts/bench-setup.sh`){" — quick mode" if a.quick else ""}
- Run: {datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}; {s.runs} run(s)
  of {s.duration:g} s per cell after {s.warmup:g} s of warm-up, median shown; took
  {b.meta["elapsed"] / 60:.1f} min; load average {lb[0]:.2f} before, {la[0]:.2f} after
- Machine: {mc["nproc"]} CPUs (`nproc`), {mc["mem"]}, Linux {mc["kernel"]}
- Versions: proxypilot {v["proxypilot"]}, binary sha256 {b.meta["bin_sha256"]}; {v["nginx"]};
  {v["mitmproxy"]}; h2load {v["h2load"]}; {v["openssl"]}; Python {v["python"]}

```
{chr(10).join(mc["lscpu"])}
```

## Setup

Everything runs on 127.0.0.1 on this one machine, so the load generator competes with the
proxies for the same cores: compare rows with each other, not with other machines.

- **direct**: h2load to the upstream, nginx (1 worker) answering a fixed {len(BODY)}-byte JSON
  body over TLS (ECDSA P-256 certificate for {HOST} from a throwaway CA made with openssl at
  the start of the run), keep-alive on. The limit.
- **proxypilot**: `proxypilot serve` (threads: {a.threads}, RUST_LOG={a.rust_log}) minting its certificate
  for the SNI, dropping the dummy `Authorization`, adding `Proxy-Tokenizer`, and sending
  absolute-form requests over pooled HTTP/1.1 to `proxypilot tokenizer` (threads 2), which opens
  the sealed secret, writes the real `Authorization` and forwards over TLS to the upstream.
- **nginx as sidecar**: nginx (2 workers) with a static certificate, `proxy_set_header
  Authorization ""`, `Proxy-Tokenizer: <sealed>`, `Host: {HOST}`, origin-form to the same
  tokenizer with `keepalive 32`, `proxy_http_version 1.1`, `Connection ""`, `proxy_buffering
  off` (needed for server-sent events).
- **mitmproxy as sidecar**: `mitmdump --mode reverse:http://TOKENIZER/` with a static
  certificate and `bench/mitm_addon.py` (drops `Authorization`, adds `Proxy-Tokenizer`, sets
  `Host` from the SNI, streams responses).
- **proxypilot via relay**: proxypilot whose tokenizer is `bench/relay.py` in front of the same
  tokenizer. The relay closes every connection after one response (`Connection: close` both
  ways) and delays each direction by {s.rtt_ms / 2:g} ms ({s.rtt_ms:g} ms RTT), plus one RTT
  for the TCP handshake of each new connection. It is Python: it caps throughput, so read
  this row for latency. {spares}.
- **proxypilot via TLS relay** ({", ".join(s.tls_relay_modes)}): the same relay serving TLS
  (certificate for `localhost` from the bench CA), so the sidecar's tokenizer is
  `https://localhost:PORT` with `ca:` set; a new connection pays one more RTT for TLS 1.3's
  handshake, which a spare has already done.
- **null tokenizer** rows ({", ".join(s.null_modes) or "not run"}): proxypilot and nginx
  as above, but their tokenizer is a static answer (nginx, plain HTTP, `return 200` with the
  same body), so the sidecar alone is measured. In the rows above, our tokenizer (which opens
  the sealed secret on every request) usually limits throughput for proxypilot and nginx alike.
- Every path is checked first: the upstream must see `Authorization: Bearer <real token>`,
  no `Proxy-Tokenizer`, and `Host: {HOST}`.

Client modes (h2load, same request for all: `GET /user`, `Authorization: Bearer dummy`):
{chr(10).join(f"- **{m.key}**: {m.label}" for m in b.modes)}

Figures: req/s = 2xx responses per second; p50/p99 from h2load's per-request log;
"+p50 vs direct" = p50 minus direct's p50 in the same mode (under load this includes queueing:
the **serial** row is the per-request cost of the hop); sidecar peak RSS = VmHWM (reset before
each run, max over runs); CPU = utime + stime from /proc per 10,000 responses (the sidecar
process, nginx: master + workers; the tokenizer separately).

## Results

{table}

{ratios}

{extras}
"""


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short durations, 1 run (smoke test)")
    ap.add_argument("--duration", type=float, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up per run")
    ap.add_argument("--runs", type=int, help="runs per cell (median reported)")
    ap.add_argument("--rtt-ms", type=float, help="the relay's simulated round trip")
    ap.add_argument("--spares", type=int, help="spares to compare with 0 (if supported)")
    ap.add_argument("--only", help="comma-separated scenarios: direct, proxypilot, nginx, "
                    "mitmproxy, relay, null")
    ap.add_argument("--modes", help="comma-separated client modes (h1,h2,close,serial)")
    ap.add_argument("--no-mitmproxy", action="store_true")
    ap.add_argument("--skip-extras", action="store_true", help="no memory/SSE/handshake figures")
    ap.add_argument("--extras", help="comma-separated extra figures to run (default all): "
                    + ", ".join(EXTRAS))
    ap.add_argument("--bin", default=os.environ.get("PROXYPILOT_BIN")
                    or str(ROOT / "target" / "release" / "proxypilot"))
    ap.add_argument("--mitmdump", default=str(Path(os.environ.get(
        "BENCH_VENV", Path.home() / ".cache" / "proxypilot" / "bench-venv")) / "bin" / "mitmdump"))
    ap.add_argument("--rust-log", default="warn", help="RUST_LOG for proxypilot (default warn)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--threads", type=int, default=1, help="the sidecar's worker threads (default 1, "
                    "as conf/proxy.yaml; nginx runs 2 workers)")
    ap.add_argument("--pingora", action="append", default=[], metavar="'KEY: VALUE'",
                    help="a top-level (pingora) key for the sidecar's config, e.g. "
                    "'work_stealing: false' (repeatable)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write --out")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    a = ap.parse_args()

    s = Settings.quick() if a.quick else Settings()
    for k in ("duration", "warmup", "runs", "rtt_ms", "spares"):
        if getattr(a, k) is not None:
            setattr(s, k, getattr(a, k))
    for tool in ("nginx", "h2load", "openssl"):
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
            sys.exit(f"{tool} is missing: run scripts/bench-setup.sh (make bench does)")
    if not a.no_mitmproxy and not Path(a.mitmdump).exists():
        sys.exit(f"{a.mitmdump} is missing: run scripts/bench-setup.sh (make bench does)")
    os.environ["PATH"] += ":/usr/sbin"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < s.many_clients * 3:
        s.many_clients = max(100, want // 3 - 100)

    command = " ".join(["python3", "bench/bench.py", *sys.argv[1:]])
    b = Bench(s, a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        b.run()
        table, ratios, extras = report(b, command)
        print()
        print(table)
        print()
        print(ratios)
        print()
        print(extras)
        if not a.no_write:
            out = Path(a.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(markdown(b, command, table, ratios, extras))
            print(f"wrote {out}")
    finally:
        b.stop_all()
        if a.keep:
            print(f"work directory kept: {b.work}")
        else:
            shutil.rmtree(b.work, ignore_errors=True)


if __name__ == "__main__":
    main()
