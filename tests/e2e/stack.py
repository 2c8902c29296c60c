"""The end-to-end tests' stack: the real binary, a local HTTPS upstream, our tokenizer and our
sidecar, started on ephemeral loopback ports, and the helpers the tests share. The fixtures that
build them once per session are in conftest.py; tests import helpers from here.
"""

import json
import os
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import harness  # noqa: E402  (tests/harness.py, shared with bench/)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VECTORS = ROOT / "tests" / "data" / "tokenizer-vectors.json"
HOSTS = ["api.github.com", "api.anthropic.com", "api.openai.com"]

# Real-looking tokens the upstream should see, and the dummy the client sends.
REAL = {
    "api.github.com": "ghp_REALgithubTOKEN0123456789",
    "api.anthropic.com": "sk-ant-REALanthropicKEY0123456789",
    "api.openai.com": "sk-REALopenaiKEY0123456789",
}
DUMMY = "dummy"


def binary():
    b = os.environ.get("PROXYPILOT_BIN") or str(ROOT / "target" / "release" / "proxypilot")
    if not Path(b).exists():
        pytest.exit(f"{b} is missing: run `make test` (it builds the binary first)", 2)
    return b


free_port = harness.free_port
wait_port = harness.wait_port
run = harness.run
rss_kib = harness.rss_kib
fd_count = harness.fd_count
seal_raw = harness.seal_raw


class Proc(harness.Proc):
    """A child process with its output in a file (RUST_LOG=info unless the test says)."""

    def __init__(self, name, args, env=None, cwd=None, log_dir=None):
        super().__init__(name, args, log_dir or tempfile.mkdtemp(),
                         env={"RUST_LOG": os.environ.get("RUST_LOG", "info"), **(env or {})},
                         cwd=cwd)


def skip_unless_ci(msg):
    """Skip a test whose precondition is missing here; in CI (where scripts/setup.sh and the
    machine provide it) fail instead, so that `make test` cannot pass without running it."""
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


class Upstream:
    def __init__(self, port, log):
        self.port = port
        self.log = log

    def requests(self):
        if not self.log.exists():
            return []
        return [json.loads(l) for l in self.log.read_text().splitlines() if l.strip()]

    def mark(self):
        return len(self.requests())

    def since(self, mark):
        return self.requests()[mark:]

    def wait_since(self, mark, n=1, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.since(mark)
            if len(got) >= n:
                return got
            time.sleep(0.02)
        return self.since(mark)


def headers_of(entry):
    """The request's headers as a case-insensitive dict of lists."""
    out = {}
    for k, v in entry["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


class Tokenizer:
    def __init__(self, proc, port, open_key, seal_key, bin_path):
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.open_key = open_key
        self.seal_key = seal_key
        self.bin = bin_path

    def seal(self, token, *args):
        r = run([self.bin, "seal", *args], input=token, env={"SEAL_KEY": self.seal_key})
        return r.stdout.strip()

    def seal_json(self, obj):
        r = run(
            [self.bin, "seal", "--json-file", "-"],
            input=json.dumps(obj),
            env={"SEAL_KEY": self.seal_key},
        )
        return r.stdout.strip()

    def seal_raw(self, data):
        """Seal any bytes with libsodium (PyNaCl), even a secret our `seal` would refuse."""
        return seal_raw(self.seal_key, data)


keygen = harness.keygen


def start_tokenizer(bin_path, workdir, pki, upstream, name="tokenizer", open_key=None, extra=()):
    if open_key is None:
        open_key, seal_key = keygen(bin_path)
    else:
        seal_key = run([bin_path, "sealkey"], env={"OPEN_KEY": open_key}).stdout.strip()
    port = free_port()
    args = [bin_path, "tokenizer", "--listen", f"127.0.0.1:{port}",
            "--upstream-ca", str(pki / "upca.pem")]
    for h in HOSTS:
        args += ["--connect-to", f"{h}:443:127.0.0.1:{upstream.port}"]
    args += list(extra)
    p = Proc(name, args, env={"OPEN_KEY": open_key}, log_dir=workdir)
    wait_port(port, p)
    return Tokenizer(p, port, open_key, seal_key, bin_path)


class Sidecar:
    def __init__(self, proc, port, ca, workdir, env):
        self.proc = proc
        self.port = port
        self.ca = ca
        self.workdir = workdir
        self.env = env

    def resolve_args(self, host="api.github.com"):
        return ["--resolve", f"{host}:{self.port}:127.0.0.1", "--cacert", str(self.ca)]

    def pid(self):
        return self.proc.p.pid

    def tls_socket(self, host="api.github.com", alpn=("http/1.1",), timeout=10):
        """A TLS connection to this sidecar for `host` (SNI), verified against its CA."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.set_alpn_protocols(list(alpn))
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return ctx.wrap_socket(sock, server_hostname=host)

    def curl(self, path, host="api.github.com", extra=(), check=True):
        url = f"https://{host}:{self.port}{path}"
        args = ["curl", "-sS", "--max-time", "20", *self.resolve_args(host), *extra,
                "-w", "\n%{http_code} %{http_version}", url]
        r = run(args, check=check)
        body, _, tail = r.stdout.rpartition("\n")
        code, _, version = tail.partition(" ")
        return int(code or 0), version, body, r


sidecar_yaml = harness.sidecar_yaml


def sealed_env(tokenizer):
    return {
        "PP_SEALED_GITHUB": tokenizer.seal(REAL["api.github.com"], "--host", "api.github.com"),
        "PP_SEALED_ANTHROPIC": tokenizer.seal(
            REAL["api.anthropic.com"], "--host", "api.anthropic.com", "--header", "x-api-key"
        ),
        "PP_SEALED_OPENAI": tokenizer.seal(REAL["api.openai.com"], "--host", "api.openai.com"),
    }


def start_sidecar(bin_path, workdir, tokenizer, name="sidecar", yaml_extra="", port=None,
                  tokenizer_extra="", section_extra="", env_extra=None, tokenizer_url=None,
                  route_extra=None, hosts_file=None):
    """A sidecar on 127.0.0.1 and [::1] at `port` (default: a free ephemeral port).

    `section_extra` adds lines to the `proxypilot:` section (indent 2), `tokenizer_extra` to its
    `tokenizer:` (indent 4), `route_extra` ({host: lines}) to a route (indent 6);
    `tokenizer_url` points it elsewhere than `tokenizer` (a stand-in), whose key still seals
    the routes' secrets. With `hosts_file` the sidecar runs in a private mount namespace whose
    /etc/hosts is that file (for names it dials itself: passthrough tunnels)."""
    d = workdir / name
    d.mkdir(exist_ok=True)
    port = port or free_port()
    conf = d / "proxy.yaml"
    text = sidecar_yaml(port, d / "ca", tokenizer_url or tokenizer.url,
                        tokenizer_extra=tokenizer_extra, section_extra=section_extra)
    for host, lines in (route_extra or {}).items():
        head = f"    - host: {host}\n"
        at = text.index(head) + len(head)
        at = text.index("\n", at) + 1  # after the route's secret line
        text = text[:at] + "".join(f"      {line}\n" for line in lines) + text[at:]
    conf.write_text(text + yaml_extra)
    env = sealed_env(tokenizer)
    env.update(env_extra or {})
    args = [bin_path, "serve", "-c", str(conf)]
    if hosts_file:
        args = under_hosts(hosts_file, args)
    p = Proc(name, args, env=env, log_dir=workdir)
    wait_port(port, p)
    return Sidecar(p, port, d / "ca" / "ca.pem", d, env)


def under_hosts(hosts, args):
    """`args` in a private mount namespace whose /etc/hosts is `hosts` (the machine's own hosts
    file is never touched)."""
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
            str(hosts), *map(str, args)]


def finish_bio_handshake(tls, incoming, outgoing, sock):
    """Drive a memory-BIO TLS client (`ssl.SSLObject`) through its handshake over `sock`, and
    send its last flight; for tests that need to see or place the raw TLS bytes."""
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    sock.sendall(outgoing.read())


def read_response(sock, timeout=10):
    """Read one HTTP/1.1 response (Content-Length, chunked or close-delimited) from a socket:
    (status, headers as a lower-case dict, body bytes). Status 0 when the connection closed
    before a status line."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            return 0, {}, buf
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()

    def more():
        try:
            return sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, OSError):
            return b""

    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            d = more()
            if not d:
                break
            rest += d
        return status, headers, rest[:n]
    if "chunked" in headers.get("transfer-encoding", ""):
        body = b""
        while True:
            while b"\r\n" not in rest:
                d = more()
                if not d:
                    return status, headers, body
                rest += d
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                d = more()
                if not d:
                    return status, headers, body + rest
                rest += d
            if size == 0:
                return status, headers, body
            body += rest[:size]
            rest = rest[size + 2:]
    while True:
        d = more()
        if not d:
            return status, headers, rest
        rest += d
