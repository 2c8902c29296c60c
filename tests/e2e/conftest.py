"""Shared fixtures: the real proxypilot binary, a local HTTPS upstream, our tokenizer, our sidecar,
each built once per session (the helpers behind them are in stack.py).

Everything listens on 127.0.0.1 (or ::1) on ephemeral ports. The binary is built once by
`make test` (release profile) and shared; set PROXYPILOT_BIN to use another build.
"""

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from stack import (HERE, HOSTS, VECTORS, Proc, Upstream, binary, harness, start_sidecar,
                   start_tokenizer)

def start_upstream(workdir, pki, name):
    """The echo upstream (upstream.py) with the leaf in `pki`: (Upstream, its process)."""
    log = workdir / f"{name}-requests.jsonl"
    ready = workdir / f"{name}.port"
    p = Proc(name, [sys.executable, str(HERE / "upstream.py"), "--cert", str(pki / "up.pem"),
                    "--key", str(pki / "up.key"), "--log", str(log), "--ready", str(ready)],
             log_dir=workdir)
    deadline = time.time() + 20
    while not ready.exists():
        if p.poll() is not None or time.time() > deadline:
            raise RuntimeError(p.output())
        time.sleep(0.05)
    return Upstream(int(ready.read_text()), log), p


@pytest.fixture(scope="session")
def bin_path():
    return binary()


@pytest.fixture(scope="session")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="pp-e2e-"))
    yield d
    if os.environ.get("PP_KEEP_TMP") != "1":
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def pki(workdir):
    """A throwaway CA and a certificate for the API hosts, made with the openssl CLI."""
    return harness.make_pki(workdir / "pki", HOSTS + ["localhost"])


@pytest.fixture(scope="session")
def upstream(workdir, pki):
    u, p = start_upstream(workdir, pki, "upstream")
    yield u
    p.stop()


@pytest.fixture(scope="session")
def tokenizer(bin_path, workdir, pki, upstream):
    t = start_tokenizer(bin_path, workdir, pki, upstream)
    yield t
    t.proc.stop()


@pytest.fixture(scope="session")
def sidecar(bin_path, workdir, tokenizer):
    s = start_sidecar(bin_path, workdir, tokenizer)
    yield s
    s.proc.stop()


@pytest.fixture(scope="session")
def vectors():
    return json.loads(VECTORS.read_text())


# --- the proxy (CONNECT) listener -----------------------------------------------------------------

PASSTHROUGH_NAME = "files.pypi.test"


class Proxied:
    """A sidecar with a CONNECT listener: `sidecar` (its TLS listener too), `url` for
    HTTPS_PROXY, the passthrough upstream (`mirror`, its CA `mirror_ca`, reached by name as
    `https://files.pypi.test:PORT`), and `hosts` (the file the sidecar resolves names with)."""

    def __init__(self, sidecar, port, mirror, mirror_ca, hosts):
        self.sidecar = sidecar
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.mirror = mirror
        self.mirror_ca = mirror_ca
        self.mirror_url = f"https://{PASSTHROUGH_NAME}:{mirror.port}"
        self.hosts = hosts


@pytest.fixture(scope="session")
def mirror(workdir):
    """A second HTTPS upstream with a CA of its own, for passthrough: (Upstream, CA path)."""
    pki = harness.make_pki(workdir / "mirror-pki", [PASSTHROUGH_NAME], label="mirror")
    u, p = start_upstream(workdir, pki, "mirror")
    yield u, pki / "upca.pem"
    p.stop()


@pytest.fixture(scope="session")
def proxied(bin_path, workdir, tokenizer, mirror):
    """The sidecar with `proxy_listen` on loopback and `*.pypi.test:PORT` as passthrough. It
    resolves names (for passthrough only) with a hosts file of its own: files.pypi.test is
    127.0.0.1, and the API names point at a loopback address where nothing listens, so a
    tunnel to them could not reach anything even if one were made."""
    from stack import free_port, wait_port
    up, ca = mirror
    hosts = workdir / "proxied-hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {PASSTHROUGH_NAME}\n"
                     + "".join(f"127.0.0.9 {h}\n" for h in HOSTS))
    pport = free_port()
    s = start_sidecar(bin_path, workdir, tokenizer, name="proxied", hosts_file=hosts,
                      section_extra=f'  proxy_listen: ["127.0.0.1:{pport}"]\n'
                                    f'  passthrough: ["*.pypi.test:{up.port}"]\n')
    wait_port(pport, s.proc)
    yield Proxied(s, pport, up, ca, hosts)
    s.proc.stop()
