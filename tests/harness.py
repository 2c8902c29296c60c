"""What the end-to-end tests (tests/e2e), the benchmark (bench/bench.py) and the soak test
(bench/soak.py) share: child processes with their output in a file, ports, a throwaway PKI made
with the openssl CLI, the tokenizer's keys and sealing, and /proc figures.

    import sys; sys.path.insert(0, str(ROOT / "tests")); import harness
"""

import base64
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    """An ephemeral port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process in its own session (so that stopping it stops its children too), with
    stdout and stderr in `log_dir/name.log`."""

    def __init__(self, name, args, log_dir, env=None, cwd=None):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.p = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                  cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.p.pid

    def poll(self):
        return self.p.poll()

    def alive(self):
        return self.p.poll() is None

    @property
    def returncode(self):
        return self.p.returncode

    def output(self, tail=None):
        """What it printed so far (the last `tail` characters)."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return text[-tail:] if tail else text

    def stop(self, sig=signal.SIGINT, timeout=10):
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


def wait_port(port, proc, host="127.0.0.1", timeout=30.0, tls=False):
    """Until `port` accepts connections (with `tls`, a finished handshake, so that the sidecar
    does not log a failed one); raises with the process's output if it exits or never listens."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.returncode}:\n{proc.output()}")
        try:
            with socket.create_connection((host, port), timeout=0.2) as s:
                if tls:
                    ctx.wrap_socket(s, server_hostname="localhost").close()
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on {host}:{port}:\n{proc.output()}")


def wait_file(path, proc, timeout=30.0):
    """Until `path` exists (a server writes its port there); its content, stripped."""
    deadline = time.time() + timeout
    while not Path(path).exists():
        if not proc.alive() or time.time() > deadline:
            raise RuntimeError(f"{proc.name} did not start:\n{proc.output()}")
        time.sleep(0.05)
    return Path(path).read_text().strip()


def run(args, input=None, env=None, cwd=None, check=True, timeout=60):
    """Run a command to completion (text in and out); with `check`, raise on failure."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    r = subprocess.run(args, input=input, capture_output=True, text=True, env=full_env, cwd=cwd,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def make_pki(d, names, label="proxypilot test"):
    """A throwaway CA (`upca.pem`, `upca.key`) and a leaf for `names` (`up.pem`, `up.key`, and
    both in `combined.pem`), made with the openssl CLI in directory `d`."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    sh = lambda *a: run(list(a), cwd=d)  # noqa: E731
    sh("openssl", "req", "-x509", *ec, "-keyout", "upca.key", "-out", "upca.pem", "-days", "2",
       "-subj", f"/CN={label} upstream CA", "-addext", "basicConstraints=critical,CA:TRUE")
    sh("openssl", "req", *ec, "-keyout", "up.key", "-out", "up.csr", "-subj", f"/CN={names[0]}")
    (d / "ext.cnf").write_text("subjectAltName=" + ",".join(f"DNS:{h}" for h in names)
                               + "\nextendedKeyUsage=serverAuth\n")
    sh("openssl", "x509", "-req", "-in", "up.csr", "-CA", "upca.pem", "-CAkey", "upca.key",
       "-CAcreateserial", "-out", "up.pem", "-days", "2", "-extfile", "ext.cnf")
    (d / "combined.pem").write_text((d / "up.key").read_text() + (d / "up.pem").read_text())
    return d


def sidecar_yaml(port, ca_dir, tokenizer_url, threads=2, both_loopbacks=True,
                 section_extra="", tokenizer_extra=""):
    """A sidecar config routing the three API hosts to the env vars PP_SEALED_GITHUB,
    PP_SEALED_ANTHROPIC and PP_SEALED_OPENAI. `section_extra` adds lines to the `proxypilot:`
    section (indent 2), `tokenizer_extra` to its `tokenizer:` (indent 4)."""
    listen = f'"127.0.0.1:{port}", "[::1]:{port}"' if both_loopbacks else f'"127.0.0.1:{port}"'
    return f"""\
version: 1
threads: {threads}
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
proxypilot:
  listen: [{listen}]
  ca:
    cert: {ca_dir}/ca.pem
    key: {ca_dir}/ca-key.pem
{section_extra}  tokenizer:
    url: {tokenizer_url}
{tokenizer_extra}  routes:
    - host: api.github.com
      secret_env: PP_SEALED_GITHUB
    - host: api.anthropic.com
      secret_env: PP_SEALED_ANTHROPIC
    - host: api.openai.com
      secret_env: PP_SEALED_OPENAI
"""


def keygen(bin_path):
    """A fresh tokenizer key pair: (OPEN_KEY, SEAL_KEY) in hex."""
    kv = dict(line.split("=", 1) for line in run([bin_path, "keygen"]).stdout.split())
    return kv["OPEN_KEY"], kv["SEAL_KEY"]


def seal(bin_path, seal_key, token, *args):
    """`proxypilot seal ARGS` with the token on stdin."""
    return run([bin_path, "seal", *args], input=token, env={"SEAL_KEY": seal_key}).stdout.strip()


def seal_raw(seal_key_hex, data):
    """Seal any bytes with libsodium (PyNaCl), even a secret our `seal` would refuse."""
    from nacl.public import PublicKey, SealedBox

    if isinstance(data, str):
        data = data.encode()
    box = SealedBox(PublicKey(bytes.fromhex(seal_key_hex)))
    return base64.b64encode(box.encrypt(data)).decode()


# ---- /proc figures


def tree(pid):
    """`pid` and its descendants (nginx's master and workers)."""
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


def status_kb(pid, key):
    """A `kB` figure of /proc/PID/status (VmRSS, VmHWM, ...), 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid):
    return status_kb(pid, "VmRSS")


def smaps_rollup_kb(pid):
    """The `kB` figures of /proc/PID/smaps_rollup (Rss, Pss, Pss_Anon, Pss_File, ...), empty if
    the process is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return out


def pss_kib(pid):
    """Proportional set size: each shared page divided among the processes mapping it, so that
    unlike VmRSS it can be summed over nginx's master and workers."""
    return smaps_rollup_kb(pid).get("Pss", 0)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pids):
    """User plus system CPU seconds of `pids` so far."""
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")
