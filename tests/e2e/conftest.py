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
    log = workdir / "upstream-requests.jsonl"
    ready = workdir / "upstream.port"
    p = Proc(
        "upstream",
        [sys.executable, str(HERE / "upstream.py"), "--cert", str(pki / "up.pem"),
         "--key", str(pki / "up.key"), "--log", str(log), "--ready", str(ready)],
        log_dir=workdir,
    )
    deadline = time.time() + 20
    while not ready.exists():
        if p.poll() is not None or time.time() > deadline:
            raise RuntimeError(p.output())
        time.sleep(0.05)
    u = Upstream(int(ready.read_text()), log)
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
