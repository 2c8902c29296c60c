"""The benchmark's measurements: h2load runs in each client mode, a few small clients (one
request, SSE latency, sequential and concurrent handshakes), and `Bench`, which runs every
scenario against the servers and gathers the figures `report` prints."""

import asyncio
import http.client
import json
import os
import re
import socket
import ssl
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass

from common import (AFTER_LEFT_S, EXTRAS, HOST, REAL_TOKEN, SSE_HOST, PeakPss, Settings,
                    cpu_seconds, free_port, pss_mib, reset_peak, rss_mib, sh, tree, wait_port)
from servers import Scenario, Servers

# --------------------------------------------------------------------------------------------
# Little clients: one HTTPS request, SSE latency, handshakes


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


def handshake_load(port, name, conns, seconds):
    """Full handshakes (new TCP connection, no resumption, closed at once, no request) for
    `seconds`, `conns` at a time from as many threads: ssl runs the handshake outside the GIL,
    so the threads keep `conns` handshakes in flight. Returns the wall-clock seconds, each
    handshake's seconds, and how many failed."""
    ctx = tls_client_ctx()
    times, failed = [], []
    deadline = time.perf_counter() + seconds

    def loop():
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            raw = None
            try:
                raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                s = ctx.wrap_socket(raw, server_hostname=name)
            except OSError:  # ssl.SSLError included
                if raw:
                    raw.close()
                failed.append(1)
                continue
            times.append(time.perf_counter() - t0)  # list.append is atomic under the GIL
            s.close()

    threads = [threading.Thread(target=loop) for _ in range(conns)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t0, times, len(failed)


def open_tls(port, name, proxy_port=None):
    """A TLS connection for `name`: straight to the TLS listener at `port`, or with
    `proxy_port`, through `CONNECT name:443` on the proxy listener."""
    ctx = tls_client_ctx()
    if proxy_port is None:
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=name)
    raw = socket.create_connection(("127.0.0.1", proxy_port))
    raw.sendall(f"CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        d = raw.recv(4096)
        if not d:
            raise OSError("the proxy closed the connection")
        head += d
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(head.split(b"\r\n")[0].decode(errors="replace"))
    return ctx.wrap_socket(raw, server_hostname=name)


def one_request(tls, name):
    """GET over an open HTTP/1.1 connection; the response read whole (Content-Length)."""
    tls.sendall(f"GET /repos/o/r HTTP/1.1\r\nHost: {name}\r\nAuthorization: Bearer dummy"
                "\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += tls.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        body += tls.recv(65536)
    return status


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


# The chain's scenarios whose unloaded (serial) row runs pinned: the sidecars compared, and
# direct, which the added p50 is taken from.
PINNED_CHAIN = ("direct", "proxypilot", "nginx", "mitmproxy")
# The sidecars the chain compares, in the order of the first run (reversed every other run).
SIDECARS = ("proxypilot", "nginx", "mitmproxy")


def unloaded_row(scn, mode_key):
    """Does this row get `Settings.unloaded_runs` runs? The serial rows of the sidecars alone
    and of PINNED_CHAIN do."""
    return mode_key == "serial" and (scn.isolated or scn.key in PINNED_CHAIN)


def pin(pids, cpus):
    """Move every thread of `pids` to `cpus` (taskset's list syntax, e.g. "0" or "0-1")."""
    for p in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(p)], capture_output=True)


def h2load(port, extra, log=None, timeout=120, on_main=None, url=None, cpus=None):
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
    if cpus:
        args = ["taskset", "-c", cpus, *args]
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




# The scenario names `--only` knows for the chain (client -> sidecar -> our tokenizer ->
# upstream); "isolated" (or "null", its old name) selects the sidecars alone.
CHAIN = ("direct", "proxypilot", "nginx", "mitmproxy", "relay", "relaytls")


def only_keys(only):
    """`--only`'s names as a set, None for all."""
    return None if not only else {"isolated" if k == "null" else k for k in only.split(",")}


def wanted(keep, key):
    """Is scenario `key` selected? A name selects its variants too (relay: relay-spares4)."""
    return keep is None or key in keep or key.split("-")[0] in keep


def wants_chain(keep):
    """Is any chain scenario selected? If not, no tokenizer, mitmproxy or relay starts."""
    return keep is None or any(k.split("-")[0] in CHAIN for k in keep)


class Bench(Servers):
    def check(self, scn):
        """Each path must deliver the real token (and no Proxy-Tokenizer) to the upstream; an
        isolated sidecar must hand the null tokenizer what the others hand ours (no
        Authorization, the sealed secret, the host), so that both do the same job."""
        status, body = https_get(scn.port, HOST, "/_check",
                                 {"Authorization": "Bearer dummy", "Host": HOST})
        want = f"auth=Bearer {REAL_TOKEN}|tokenizer=|host={HOST}"
        if scn.key == "direct":
            want = f"auth=Bearer dummy|tokenizer=|host={HOST}"
        elif scn.isolated:
            want = f"auth=|tokenizer={self.sealed[HOST]}|host={HOST}"
        if status != 200 or body != want:
            raise RuntimeError(f"{scn.label}: /_check gave {status} {body!r}, want {want!r}")

    # -- load -------------------------------------------------------------------------------------

    def timed_load(self, port, args, groups, by_count, warm_n, url=None, log=None, cpus=None):
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
            w = h2load(port, args + ["-n", str(warm_n)], url=url, timeout=tmo, cpus=cpus)
            rate = w["ok"] / max(w["elapsed"], 1e-3) if not w.get("error") else 50
            mark("start")
            r = h2load(port, args + ["-n", str(max(warm_n, int(rate * s.duration)))],
                       url=url, log=log, timeout=tmo, cpus=cpus)
            mark("end")
        else:
            r = h2load(port, args + ["--warm-up-time", dur(s.warmup), "-D", dur(s.duration)],
                       url=url, log=log, timeout=tmo, on_main=mark, cpus=cpus)
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
        # Our tokenizer's CPU too, where the path goes through it.
        tok = tree(self.tokenizer.pid) if pids and not scn.isolated else []
        reset_peak(pids)
        # A sidecar alone gets a CPU of its own, and h2load and the static upstream the other:
        # unpinned, the scheduler sometimes put the sidecar beside h2load, and HTTP/1.1 figures
        # of one build moved by 15% between runs.
        pinned = scn.isolated and self.pin_cpus and pids
        # One unloaded client through the whole chain, likewise: the sidecar (none for direct)
        # on a CPU of its own, and h2load, our tokenizer and the upstream on the other, where
        # they take turns. Unpinned, where the scheduler woke each hop added noise of its own
        # to a difference of hundredths of a millisecond. Loaded chain rows stay unpinned:
        # there the tokenizer needs more than one CPU.
        pinned = pinned or (self.pin_cpus and mode.key == "serial" and scn.key in PINNED_CHAIN)
        rest = (tree(self.upstream.pid) + (tree(self.tokenizer.pid) if not scn.isolated else [])
                if pinned else [])
        if pinned:
            pin(pids, self.pin_cpus[0])
            pin(rest, self.pin_cpus[1])
        try:
            r, res, (cpu10k, tok10k) = self.timed_load(
                scn.port, mode.args, [pids, tok], mode.by_count,
                warm_n=max(4 * s.close_conns, int(s.warmup * 150)), log=self.work / "h2load.log",
                cpus=self.pin_cpus[1] if pinned else None)
        finally:
            if pinned:
                pin(pids + rest, f"0-{os.cpu_count() - 1}")
        res["cpu10k"] = cpu10k if pids else None
        res["tok10k"] = tok10k if tok else None
        res["hwm"] = rss_mib(pids, "VmHWM") if pids else None
        if r["bad"] or r.get("error") or not r["ok"]:
            (self.logs / "h2load-errors.log").open("a").write(
                f"--- {scn.key} {mode.key}\n{r['out'][-3000:]}\n")
        return res

    def measure_handshakes(self, scn: Scenario):
        """Full handshakes only, `handshake_conns` at a time for `duration` (long enough for
        /proc's CPU ticks, 10 ms): handshakes/s, and the sidecar's CPU per handshake (kept in
        `cpu10k` as seconds per 10,000, like a request's)."""
        s = self.s
        pids = tree(scn.pids())
        handshake_load(scn.port, HOST, s.handshake_conns, min(s.warmup, 0.5))  # warm-up
        cpu0 = cpu_seconds(pids)
        elapsed, times, bad = handshake_load(scn.port, HOST, s.handshake_conns, s.duration)
        used = cpu_seconds(pids) - cpu0
        times.sort()
        n = len(times)
        return {"rps": n / elapsed, "p50": pct(times, 0.50) * 1000, "p99": pct(times, 0.99) * 1000,
                "n": n, "bad": bad, "error": None if n else "no handshake succeeded",
                "cpu10k": used / n * 10000 if n else None, "tok10k": None, "hwm": None}

    # -- the run ----------------------------------------------------------------------------------

    def isolated_scenarios(self):
        """The sidecar alone: proxypilot (and --ab's binary) with `threads: N` and nginx with
        `worker_processes N`, each forwarding with keep-alive to the null tokenizer (a static
        answer), so that neither waits on our tokenizer."""
        s = self.s
        pp, pp_port = self.start_sidecar("isolated-proxypilot", self.null_port)
        ng, ng_port = self.start_nginx_sidecar("isolated-nginx", self.null_port)
        note = "sidecar alone: static upstream"
        scns = [
            Scenario("isolated-proxypilot", "proxypilot alone", pp_port, pids=lambda: pp.pid,
                     note=note, modes=s.isolated_modes, isolated=True),
            Scenario("isolated-nginx", "nginx alone", ng_port, pids=lambda: ng.pid,
                     note=note, modes=s.isolated_modes, isolated=True),
        ]
        if self.bin_b:
            pb, pb_port = self.start_sidecar("isolated-proxypilot-B", self.null_port,
                                             binary=self.bin_b)
            scns.append(Scenario("isolated-proxypilot-B", "proxypilot-B alone", pb_port,
                                 pids=lambda: pb.pid, note=f"{note}; --ab {self.a.ab}",
                                 modes=s.isolated_modes, isolated=True))
        return scns

    def chain_scenarios(self):
        """The whole path: client -> sidecar -> our tokenizer -> upstream, for proxypilot, nginx
        and mitmproxy, and proxypilot through the RTT relays."""
        s, a = self.s, self.a
        self.start_sse_upstream()
        self.start_tokenizer()
        pp, pp_port = self.start_sidecar("proxypilot", self.tok_port)
        ng, ng_port = self.start_nginx_sidecar()
        self.sse_ports = {"direct": self.sse_up_port, "proxypilot": pp_port, "nginx": ng_port}
        scns = [
            Scenario("direct", "direct (client -> upstream)", self.up_port),
            Scenario("proxypilot", "proxypilot", pp_port, pids=lambda: pp.pid),
            Scenario("nginx", "nginx as sidecar", ng_port, pids=lambda: ng.pid),
        ]
        if not a.no_mitmproxy:
            mp, mp_port = self.start_mitmproxy()
            self.sse_ports["mitmproxy"] = mp_port
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
        return scns

    def run(self):
        s, a = self.s, self.a
        t_start = time.time()
        self.meta["load_before"] = os.getloadavg()
        self.prepare()
        self.say(f"workdir {self.work}")
        self.start_upstream()
        self.tokenizer, self.spares, self.sse_ports = None, None, {}

        # The isolated sidecars always start (the handshake figures use them); the chain only
        # when one of its scenarios is wanted, so that `--only isolated` starts no tokenizer,
        # mitmproxy or relay.
        keep = only_keys(a.only)
        iso_all = self.isolated_scenarios()
        scns = list(iso_all)
        self.chain = wants_chain(keep)
        if self.chain:
            scns += self.chain_scenarios()
        scns = [c for c in scns if wanted(keep, c.key)]
        ms = [m for m in modes(s) if not a.modes or m.key in a.modes.split(",")]
        hs = not a.modes or "handshakes" in a.modes.split(",")

        for scn in scns:
            if scn.check:
                self.check(scn)
        self.say("every path delivers the real token to the upstream, every isolated sidecar "
                 "the sealed one to the null tokenizer (checked via /_check)")

        # Idle memory: after start and one request (the check), before any load.
        idle = {c.key: pss_mib(tree(c.pids())) | {"label": c.label}
                for c in scns if c.pids and (c.isolated or c.key in ("proxypilot", "nginx",
                                                                     "mitmproxy"))}
        if self.tokenizer:
            idle["tokenizer"] = pss_mib(tree(self.tokenizer.pid)) | {"label": "tokenizer"}
        self.extra["idle"] = idle

        # The load matrix, interleaved: run i of every scenario and mode before run i+1. The
        # isolated sidecars take turns at going first, so that none always follows the same one
        # (what ran just before warms or heats the shared cores).
        # The unloaded (serial) rows of the sidecars alone and of PINNED_CHAIN get more runs
        # than the rest (`serial_runs`): the difference they decide is about one run's noise.
        # Those extra runs come after the matrix, the same interleaving, serial mode only.
        # The sidecars compared in the chain go in reverse order every other run, likewise.
        iso = [c for c in scns if c.isolated]
        chain = [c for c in scns if not c.isolated]
        for i in range(s.unloaded_runs):
            turn = iso[i % len(iso):] + iso[:i % len(iso)] if iso else []
            if i % 2:
                swap = [c for c in chain if c.key in SIDECARS]
                back = iter(reversed(swap))
                turn_chain = [next(back) if c in swap else c for c in chain]
            else:
                turn_chain = chain
            extra = i >= s.runs
            for mode in ms:
                if extra and mode.key != "serial":
                    continue
                for scn in turn + turn_chain:
                    if scn.modes is not None and mode.key not in scn.modes:
                        continue
                    if extra and not unloaded_row(scn, mode.key):
                        continue
                    self.record(i, scn, mode.key, self.measure(scn, mode))
            for scn in turn if hs and not extra else []:
                self.record(i, scn, "handshakes", self.measure_handshakes(scn), unit="hs/s")

        want = set(EXTRAS if not a.extras else a.extras.split(",")) - (
            set(EXTRAS) if a.skip_extras else set())
        if "memory" in want:
            self.check_alive()
            self.many_clients([c for c in scns if c.key in idle])
        if "sse" in want and self.chain:
            self.sse(self.sse_ports)
        self.check_alive()
        if "handshakes" in want:
            self.handshakes(iso_all)
        if "tokenizer" in want and self.chain:
            self.tokenizer_alone()
        if "connect" in want:
            self.connect_cost()
        if "mint" in want:
            self.mint_estimate()
            self.ca_bench()
        self.meta["load_after"] = os.getloadavg()
        self.meta["elapsed"] = time.time() - t_start
        self.scns, self.modes = scns, ms

    def record(self, i, scn, mode_key, r, unit="req/s"):
        self.check_alive()
        scn.results.setdefault(mode_key, []).append(r)
        flag = f" ERRORS={r['bad']}" if r["bad"] else ""
        flag += f" ({r['error']})" if r["error"] else ""
        cpu = f"  CPU {r['cpu10k'] * 100:6.1f} us" if r["cpu10k"] is not None else ""
        runs = self.s.unloaded_runs if unloaded_row(scn, mode_key) else self.s.runs
        self.say(f"run {i + 1}/{runs} {mode_key:10} {scn.key:24} "
                 f"{r['rps']:9.0f} {unit:5}  p50 {r['p50']:7.2f} ms  "
                 f"p99 {r['p99']:7.2f} ms{cpu}{flag}")

    def many_clients(self, scns):
        """`many_clients` keep-alive clients through each proxy in turn: its peak PSS while they
        run (sampled), and its PSS AFTER_LEFT_S after they left, read by a timer so that every
        proxy gets the same idle time (the next proxy's load runs meanwhile)."""
        out = {}
        n = self.s.many_clients
        timers = []
        for scn in scns:
            pids = tree(scn.pids())
            reset_peak(pids)
            # Every client keeps its connection and sends one request a second, `many_duration`
            # times (by count: h2load's --rps with -D does not finish).
            per = max(1, int(self.s.many_duration))
            with PeakPss(pids) as peak:
                r = h2load(scn.port, ["--h1", "-c", str(n), "--rps", "1", "-n", str(n * per)],
                           timeout=self.s.many_duration * 10 + 120)
            v = out[scn.key] = {"peak": peak.peak, "hwm": rss_mib(pids, "VmHWM"), "ok": r["ok"],
                                "bad": r["bad"], "error": r.get("error")}
            timer = threading.Timer(AFTER_LEFT_S, lambda v=v, pids=pids: v.update(
                after=pss_mib(pids)))
            timer.start()
            timers.append(timer)
            self.say(f"{n} keep-alive clients via {scn.key}: peak PSS {v['peak']['pss']:.1f} MiB "
                     f"(anon {v['peak']['anon']:.1f}), peak RSS {v['hwm']:.1f} MiB, "
                     f"{r['ok']} ok, {r['bad']} failed")
        for timer in timers:
            timer.join()
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

    def handshakes(self, iso):
        """Full handshakes one at a time against the isolated sidecars (proxypilot's minted and
        cached leaf, nginx's static certificate), a proxypilot minting on every handshake, and
        the upstream nginx."""
        n = self.s.handshakes
        out = {}
        # Always-new certificates: a 1 s leaf lifetime is already past its renewal point (leaves
        # are backdated 5 min), so this sidecar mints a fresh leaf for every handshake.
        mint, mint_port = self.start_sidecar("proxypilot-mint-every", self.null_port,
                                             extra="\n  leaf_lifetime: 1s")
        ports = {c.key: c.port for c in iso}
        servers = [("proxypilot (minted, cached)", ports["isolated-proxypilot"]),
                   ("proxypilot (new leaf minted every handshake)", mint_port),
                   ("nginx sidecar (static cert)", ports["isolated-nginx"]),
                   ("nginx upstream (static cert)", self.up_port)]
        if "isolated-proxypilot-B" in ports:
            servers[1:1] = [("proxypilot-B (minted, cached)", ports["isolated-proxypilot-B"])]
        for key, port in servers:
            handshake_times(port, HOST, 20)  # warm-up
            t = sorted(handshake_times(port, HOST, n))
            out[key] = {"p50": pct(t, 0.5) * 1000, "p99": pct(t, 0.99) * 1000,
                        "rate": len(t) / sum(t)}
            self.say(f"handshakes {key}: median {out[key]['p50']:.3f} ms")
        mint.stop()
        self.extra["handshakes"] = out

    def connect_cost(self):
        """The proxy (CONNECT) listener against the TLS listener of one sidecar alone (null
        tokenizer), one client at a time: a new connection with one request (TCP, CONNECT for
        the proxy listener, TLS, GET), and requests on one kept-alive connection. Both arms in
        every round, alternating which goes first; the sidecar's CPU per connection/request is
        read from /proc around each arm."""
        pport = free_port()
        p, port = self.start_sidecar("proxypilot-connect", self.null_port,
                                     extra=f'\n  proxy_listen: ["127.0.0.1:{pport}"]')
        wait_port(pport, p)
        arms = {"TLS listener": None, "proxy listener (CONNECT)": pport}
        n_new, n_ka = self.s.connect_new, self.s.connect_keepalive
        res = {k: {"new": [], "ka": [], "cpu_new": 0.0, "cpu_ka": 0.0, "n_new": 0, "n_ka": 0}
               for k in arms}
        for key, pp in arms.items():  # warm-up (and a check that both answer 200)
            for _ in range(20):
                t = open_tls(port, HOST, pp)
                assert one_request(t, HOST) == 200, key
                t.close()
        for rnd in range(self.s.runs):
            order = list(arms.items())
            if rnd % 2:
                order.reverse()
            for key, pp in order:
                r = res[key]
                c0 = cpu_seconds([p.pid])
                for _ in range(n_new):
                    t0 = time.perf_counter()
                    t = open_tls(port, HOST, pp)
                    one_request(t, HOST)
                    r["new"].append(time.perf_counter() - t0)
                    t.close()
                r["cpu_new"] += cpu_seconds([p.pid]) - c0
                r["n_new"] += n_new
                t = open_tls(port, HOST, pp)
                c0 = cpu_seconds([p.pid])
                for _ in range(n_ka):
                    t0 = time.perf_counter()
                    one_request(t, HOST)
                    r["ka"].append(time.perf_counter() - t0)
                r["cpu_ka"] += cpu_seconds([p.pid]) - c0
                r["n_ka"] += n_ka
                t.close()
        out = {}
        for key, r in res.items():
            new, ka = sorted(r["new"]), sorted(r["ka"])
            out[key] = {"new_p50": pct(new, 0.5) * 1000, "new_p99": pct(new, 0.99) * 1000,
                        "new_cpu_us": r["cpu_new"] / r["n_new"] * 1e6,
                        "ka_p50": pct(ka, 0.5) * 1000, "ka_p99": pct(ka, 0.99) * 1000,
                        "ka_cpu_us": r["cpu_ka"] / r["n_ka"] * 1e6,
                        "n_new": r["n_new"], "n_ka": r["n_ka"]}
            self.say(f"connect cost {key}: {out[key]}")
        p.stop()
        self.procs.remove(p)
        self.extra["connect"] = out

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
            p, port = self.start_sidecar(f"mint-{i}", self.null_port)
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


