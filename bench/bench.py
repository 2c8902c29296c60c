#!/usr/bin/env python3
"""`make bench`: proxypilot against the limit (direct), nginx and mitmproxy doing the sidecar's job.

One run starts everything on loopback (ephemeral ports), drives it with h2load, prints the tables
and rewrites docs/benchmarks.md. Nothing leaves the machine.

    python3 bench/bench.py            # the full run (about 10 minutes)
    python3 bench/bench.py --quick    # a smoke test: short durations, one run
    python3 bench/bench.py --only isolated --ab OTHER_BINARY --runs 5 --skip-extras --no-write
                                      # A/B of two builds, sidecar alone (a few minutes)

Processes (all on 127.0.0.1):

    h2load --TLS--> proxypilot serve (threads: N) ---> null tokenizer (nginx return 200,
    h2load --TLS--> nginx (worker_processes N) -----/   plain HTTP)          [sidecar alone]
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
import os
import resource
import shutil
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXTRAS, ROOT, Settings  # noqa: E402
from measure import Bench, only_keys, wants_chain  # noqa: E402
from report import markdown, report  # noqa: E402

# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short durations, 1 run (smoke test)")
    ap.add_argument("--duration", type=float, help="seconds measured per run")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up per run")
    ap.add_argument("--runs", type=int, help="runs per cell (median reported)")
    ap.add_argument("--serial-runs", type=int, help="runs of the unloaded (serial) rows of the "
                    "sidecars alone and of the pinned chain, where more than --runs (default 9)")
    ap.add_argument("--rtt-ms", type=float, help="the relay's simulated round trip")
    ap.add_argument("--spares", type=int, help="spares to compare with 0 (if supported)")
    ap.add_argument("--only", help="comma-separated scenarios: isolated (the sidecars alone; "
                    "alone, it starts no tokenizer, mitmproxy or relay), direct, proxypilot, "
                    "nginx, mitmproxy, relay, relaytls")
    ap.add_argument("--modes", help="comma-separated client modes "
                    "(h1,h2,close,serial,handshakes)")
    ap.add_argument("--ab", metavar="PATH", help="a second proxypilot binary, run as a third "
                    "sidecar alone (B) interleaved with the others; the report gives B/A")
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
    ap.add_argument("--threads", type=int, default=1, help="the sidecar's worker threads "
                    "(default 1, as conf/proxy.yaml); nginx as sidecar runs as many workers")
    ap.add_argument("--pingora", action="append", default=[], metavar="'KEY: VALUE'",
                    help="a top-level (pingora) key for the sidecar's config, e.g. "
                    "'work_stealing: false' (repeatable)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the sidecar alone to a "
                    "CPU of its own (h2load and the static upstream to the others)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write --out")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    a = ap.parse_args()

    s = Settings.quick() if a.quick else Settings()
    for k in ("duration", "warmup", "runs", "serial_runs", "rtt_ms", "spares"):
        if getattr(a, k) is not None:
            setattr(s, k, getattr(a, k))
    for tool in ("nginx", "h2load", "openssl"):
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
            sys.exit(f"{tool} is missing: run scripts/bench-setup.sh (make bench does)")
    if wants_chain(only_keys(a.only)) and not a.no_mitmproxy and not Path(a.mitmdump).exists():
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
        sections = report(b, command)  # the sidecar alone first, then A/B, chain, ratios, extras
        for text in sections:
            if text:
                print()
                print(text)
        if not a.no_write:
            out = Path(a.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(markdown(b, command, *sections))
            print(f"wrote {out}")
    finally:
        b.stop_all()
        if a.keep:
            print(f"work directory kept: {b.work}")
        else:
            shutil.rmtree(b.work, ignore_errors=True)


if __name__ == "__main__":
    main()

