#!/usr/bin/env python3
"""The training run of `make pgo`: drive an instrumented proxypilot through the paths users take.

scripts/pgo.sh builds proxypilot with `-Cprofile-generate`, runs this with that binary, and
merges the counts into pgo/proxypilot.profdata.xz, which `make build` compiles with. Code
that never runs here counts as cold and is optimized for size, so every path a user takes
should run at least a little: the sidecar alone and in front of our tokenizer, HTTP/1.1 and
HTTP/2, keep-alive, a new TLS connection per request and one client at a time, server-sent
events, an https:// tokenizer with spare connections, and the forward-proxy (CONNECT)
listener. Uses the benchmark's servers (bench/servers.py): nginx, h2load and the Python
upstream, all on loopback.

    python3 bench/pgo.py INSTRUMENTED_BINARY
"""

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HOST, Settings, free_port  # noqa: E402
from measure import Bench, h2load  # noqa: E402

LOADS = [
    ["--h1", "-c", "64", "-D", "3s"],  # HTTP/1.1 keep-alive
    ["-c", "8", "-m", "8", "-D", "3s"],  # HTTP/2, 8 streams per connection
    ["--h1", "-c", "16", "-H", "Connection: close", "-n", "1500"],  # a handshake per request
    ["--h1", "-c", "1", "-n", "1500"],  # one client at a time
]


class Args:
    threads = 1
    pingora = []
    rust_log = "warn"
    ab = None
    mitmdump = None

    def __init__(self, binary):
        self.bin = binary


def drive(b, name, port, loads):
    for load in loads:
        r = h2load(port, load)
        b.say(f"{name} {' '.join(load)}: {r['ok']} ok, {r['bad']} failed")
        if r["ok"] == 0 or r["bad"]:
            raise RuntimeError(f"{name}: requests failed during training: {r}")


def connect_requests(b, name, port, proxy_port, n):
    """Requests through the forward-proxy listener (CONNECT, then TLS to the sidecar's leaf)."""
    ca = b.work / name / "ca" / "ca.pem"
    for _ in range(n):
        out = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca),
             "--proxy", f"http://127.0.0.1:{proxy_port}", "-H", "Authorization: Bearer dummy",
             f"https://{HOST}/user"], capture_output=True, text=True, timeout=30)
        if out.stdout != "200":
            raise RuntimeError(f"CONNECT request failed: {out.stdout} {out.stderr}")
    b.say(f"{name}: {n} requests through CONNECT")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    s = Settings()
    s.sse_streams = 4
    b = Bench(s, Args(sys.argv[1]))
    try:
        b.prepare()
        b.start_upstream()
        b.start_sse_upstream()
        b.start_tokenizer()
        _, alone = b.start_sidecar("alone", b.null_port)
        drive(b, "sidecar alone", alone, LOADS)
        proxy_port = free_port()
        _, chain = b.start_sidecar(
            "chain", b.tok_port, extra=f'\n  proxy_listen: ["127.0.0.1:{proxy_port}"]')
        drive(b, "sidecar and tokenizer", chain, LOADS)
        connect_requests(b, "chain", chain, proxy_port, 100)
        b.sse({"proxypilot": chain})
        _, tls_relay = b.start_relay(tls=True)
        _, spares = b.start_sidecar("tls-spares", tls_relay, spares=s.spares, tls=True)
        drive(b, "https tokenizer with spares", spares, [["--h1", "-c", "4", "-n", "300"]])
    finally:
        b.stop_all()  # SIGTERM: each process writes its counts as it exits


if __name__ == "__main__":
    main()
