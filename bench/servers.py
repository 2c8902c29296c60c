"""The benchmark's servers: nginx (the fast upstream, the static "null tokenizer", and nginx
doing the sidecar's job), the Python SSE upstream, our tokenizer, proxypilot, mitmproxy and the
RTT relay, all started on loopback by `Servers` (which `measure.Bench` extends with the
measurements)."""

import hashlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (BENCH, BODY, HOST, REAL_TOKEN, ROOT, SSE_HOST, Proc, Settings, free_port,
                    sh, wait_file, wait_port)

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
    isolated: bool = False  # in front of the null tokenizer: the sidecar alone
    results: dict = field(default_factory=dict)  # mode key -> list of per-run dicts


class Servers:
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
        self.bin_b = None
        # (sidecar, load) CPUs for the sidecar-alone table; None: not pinned.
        n = os.cpu_count() or 1
        self.pin_cpus = None if getattr(self.a, "no_pin", True) or n < 2 else (
            str(n - 1), "0" if n == 2 else f"0-{n - 2}")
        if self.a.ab:  # the second binary of an A/B comparison, copied for the same reason
            if not Path(self.a.ab).exists():
                sys.exit(f"{self.a.ab} (--ab) is missing")
            self.bin_b = str(self.work / "bin" / "proxypilot-B")
            shutil.copy2(self.a.ab, self.bin_b)
            self.meta["bin_b_sha256"] = hashlib.sha256(
                Path(self.bin_b).read_bytes()).hexdigest()[:12]

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
        """nginx: the fast HTTPS upstream and the null tokenizer, each with /_check that echoes
        what reached it."""
        port = free_port()
        body = BODY.replace("'", "\\'")
        self.up_port = port
        self.null_port = free_port()
        self.upstream = self.nginx("upstream", f"""\
  # The null tokenizer: plain HTTP, answers every request itself (isolates the sidecar).
  server {{
    listen 127.0.0.1:{self.null_port};
    location = /_check {{
      default_type text/plain;
      return 200 "auth=$http_authorization|tokenizer=$http_proxy_tokenizer|host=$host";
    }}
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

    def start_sse_upstream(self):
        """The Python upstream for server-sent events (timestamps each event it sends)."""
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

    def start_sidecar(self, name, tokenizer_port, spares=None, extra="", tls=False, binary=None):
        port = free_port()
        conf = self.sidecar_yaml(name, port, tokenizer_port, spares, extra, tls)
        p = self.start(name, [binary or self.bin, "serve", "-c", str(conf)],
                       env=self.sidecar_env())
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
        p = self.nginx(name, "\n".join(blocks), workers=self.a.threads)
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

