"""Shared by the benchmark's modules: the scenario's names, its settings, and the helpers for
processes and /proc figures (most from tests/harness.py, shared with the tests)."""

import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import harness  # noqa: E402  (tests/harness.py)

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


EXTRAS = ("memory", "sse", "handshakes", "connect", "tokenizer", "mint")


@dataclass
class Settings:
    duration: float = 4.0  # seconds measured per run
    warmup: float = 1.5  # seconds of warm-up before each run (not measured)
    runs: int = 3  # runs per scenario and client mode; the median is reported
    serial_runs: int = 9  # runs of the unloaded rows (sidecars alone, pinned chain), if more
    h1_conns: int = 64  # HTTP/1.1 keep-alive: connections, one request in flight each
    h2_conns: int = 8  # HTTP/2: connections ...
    h2_streams: int = 8  # ... times concurrent streams = the same 64 in flight
    close_conns: int = 16  # a new TLS connection per request, this many at a time
    rtt_ms: float = 10.0  # the relay's simulated round trip
    spares: int = 4  # `spares: N` compared with 0 when the binary knows the key
    many_clients: int = 1000  # keep-alive clients for the memory figure
    many_duration: float = 3.0  # requests per client (one a second)
    handshakes: int = 1000  # sequential full handshakes per server
    handshake_conns: int = 16  # concurrent handshakes, as many as close mode's connections
    mint_restarts: int = 10  # sidecar restarts for the first-handshake estimate
    connect_new: int = 300  # new connections (one request each) per arm and run, CONNECT cost
    connect_keepalive: int = 2000  # requests on one connection per arm and run, CONNECT cost
    isolated_modes: tuple = ("h1", "h2", "close", "serial")  # modes run by the isolated sidecars
    tls_relay_modes: tuple = ("h1", "serial")  # modes run through the TLS relay
    tokenizer_conns: int = 16  # client connections for "our tokenizer alone"
    sse_events: int = 50
    sse_gap_ms: int = 20
    sse_streams: int = 5  # streams per path, interleaved; one stream's worst event is one sample

    @classmethod
    def quick(cls):
        return cls(duration=3.0, warmup=1.0, runs=1, serial_runs=1, many_duration=3.0,
                   handshakes=200, mint_restarts=3, sse_streams=2, connect_new=100,
                   connect_keepalive=500)

    @property
    def unloaded_runs(self):
        """Runs of the unloaded rows: `serial_runs`, or `runs` if that is more."""
        return max(self.runs, self.serial_runs)


# --------------------------------------------------------------------------------------------
# Processes (tests/harness.py)

free_port = harness.free_port
wait_file = harness.wait_file
tree = harness.tree
status_kb = harness.status_kb


class Proc(harness.Proc):
    """A child process in its own session, output to a log file, stopped (with its group) by
    SIGTERM."""

    def stop(self, sig=signal.SIGTERM, timeout=10):
        super().stop(sig, timeout)


def wait_port(port, proc, timeout=60.0):
    harness.wait_port(port, proc, timeout=timeout)


def sh(args, input=None, env=None, cwd=None, check=True, timeout=120):
    try:
        return harness.run(args, input=input, env=env, cwd=cwd, check=check, timeout=timeout)
    except AssertionError as e:
        raise RuntimeError(str(e)) from None


# --------------------------------------------------------------------------------------------
# /proc figures: CPU seconds and memory of a process and its children (nginx workers)


# Seconds after its many clients left before a proxy's memory is read again, the same for every
# proxy: more than the sidecar's heap trim period (memory::TRIM_EVERY, 10 s).
AFTER_LEFT_S = 12


cpu_seconds = harness.cpu_seconds


def rss_mib(pids, key="VmRSS"):
    """Sum over the processes (shared pages of nginx's workers are counted in each)."""
    return sum(status_kb(p, key) for p in pids) / 1024


def pss_mib(pids):
    """{"pss", "anon"}: PSS and its anonymous part (heap, stacks), MiB, summed over the processes.
    PSS divides a shared page among its mappers, so nginx's master and workers add up to what
    they use together; the file-backed rest (the binary, libraries) is also divided with every
    other process mapping the same files, hence the anonymous part, which is what clients grow."""
    out = {"pss": 0.0, "anon": 0.0}
    for p in pids:
        kb = harness.smaps_rollup_kb(p)
        out["pss"] += kb.get("Pss", 0) / 1024
        out["anon"] += kb.get("Pss_Anon", 0) / 1024
    return out


class PeakPss:
    """The highest PSS of `pids` while the `with` block runs (the sample with the most), read
    every `every` s in a thread: VmHWM, the kernel's own peak, exists for RSS only."""

    def __init__(self, pids, every=0.2):
        self.pids, self.every = pids, every
        self.peak = {"pss": 0.0, "anon": 0.0}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self):
        while True:
            now = pss_mib(self.pids)
            if now["pss"] > self.peak["pss"]:
                self.peak = now
            if self.done.wait(self.every):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def reset_peak(pids):
    """Reset VmHWM so that the next read is the peak of what follows (Linux clear_refs 5)."""
    for p in pids:
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
        except OSError:
            pass
