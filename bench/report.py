"""The benchmark's report: the tables on stdout and docs/benchmarks.md."""

import datetime
import os
import platform
import re
import statistics
import subprocess

from common import AFTER_LEFT_S, BODY, HOST, ROOT

# --------------------------------------------------------------------------------------------
# Report


def med(values):
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def fmt(v, spec=".1f", none="–"):
    return none if v is None or v != v else format(v, spec)


def versions(a, mitmproxy=True):
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
        "proxypilot_b": first_line([a.ab, "--version"]).replace("proxypilot ", "")
                        if a.ab else None,
        "mitmproxy": first_line([a.mitmdump, "--version"]).replace("Mitmproxy: ", "mitmproxy ")
                     if mitmproxy and not a.no_mitmproxy else "mitmproxy not run",
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


def ratio(x, y):
    return x / y if x is not None and y else None


def summarize(b):
    """(scenario key, mode key) -> the median of each figure over the runs, the min and max of
    req/s, and the errors; "handshakes" is a mode of the isolated sidecars."""
    summary = {}
    for c in b.scns:
        for mode_key, runs in c.results.items():
            rps = [r["rps"] for r in runs]
            row = {k: med([r[k] for r in runs]) for k in ("rps", "p50", "p99", "cpu10k", "tok10k")}
            row["min"], row["max"], row["runs"] = min(rps), max(rps), len(rps)
            row["hwm"] = max((r["hwm"] for r in runs if r["hwm"] is not None), default=None)
            row["bad"] = sum(r["bad"] for r in runs)
            row["errors"] = sorted({r["error"] for r in runs if r["error"]})
            summary[(c.key, mode_key)] = row
    return summary


def spread(row):
    return f" ({row['min']:,.0f}–{row['max']:,.0f})" if row["runs"] > 1 else ""


def us(row):
    """CPU µs per request (or handshake) from seconds per 10,000."""
    return row["cpu10k"] * 100 if row["cpu10k"] is not None else None


def pair_rows(b, summary, x, y):
    """(mode key, short label, row of x, row of y) for each client mode both ran, then the
    handshakes."""
    out = []
    for key, label in [(m.key, m.short) for m in b.modes] + [("handshakes", "full handshakes")]:
        rx, ry = summary.get((x, key)), summary.get((y, key))
        if rx and ry:
            out.append((key, label, rx, ry))
    return out


def pair_table(b, summary, x, y, xname, yname):
    """Two sidecars side by side, mode by mode, with x/y ratios."""
    L = [f"| client | {xname} req/s (min–max) | {yname} req/s (min–max) | throughput "
         f"{xname}/{yname} | {xname} CPU µs/req | {yname} CPU µs/req | CPU {xname}/{yname} | "
         f"{xname} p50 ms | {yname} p50 ms | errors ({xname} / {yname}) |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, label, rx, ry in pair_rows(b, summary, x, y):
        if key == "handshakes":  # the same columns, per handshake instead of per request
            label = (f"full handshakes, {b.s.handshake_conns} at a time (figures per "
                     "handshake, no request)")
        errs = f"{rx['bad']} / {ry['bad']}" + "".join(f" ({e})"
                                                     for e in rx["errors"] + ry["errors"])
        tput, cpu = ratio(rx["rps"], ry["rps"]), ratio(rx["cpu10k"], ry["cpu10k"])
        L.append(f"| {label} | {fmt(rx['rps'], ',.0f')}{spread(rx)} | "
                 f"{fmt(ry['rps'], ',.0f')}{spread(ry)} | {fmt(tput, '.2f')}x | {fmt(us(rx))} | "
                 f"{fmt(us(ry))} | {fmt(cpu, '.2f')}x | {fmt(rx['p50'], '.3f')} | "
                 f"{fmt(ry['p50'], '.3f')} | {errs} |")
    return "\n".join(L) if len(L) > 2 else ""


def unloaded_pairs(b, x, y, xname, yname):
    """One line on the serial (unloaded) row of x against y, run by run: run i of each ran
    back to back, so their difference is what the machine's drift between runs leaves out."""
    by = {c.key: c for c in b.scns}
    rx = by[x].results.get("serial", []) if x in by else []
    ry = by[y].results.get("serial", []) if y in by else []
    d = [(u["p50"] - v["p50"]) * 1000 for u, v in zip(rx, ry)
         if u["p50"] == u["p50"] and v["p50"] == v["p50"]]
    if not d:
        return ""
    lower = sum(1 for v in d if v < 0)
    same = sum(1 for v in d if v == 0)
    return (f"Unloaded (serial), run by run ({len(d)} runs, which goes first alternating): "
            f"{xname}'s p50 was lower than {yname}'s in {lower}, equal in {same} and higher in "
            f"{len(d) - lower - same}; median difference {med(d):+.1f} µs ({xname} − {yname}; "
            f"runs from {min(d):+.0f} to {max(d):+.0f} µs).")


def pair_ratios(b, summary, x, y, what):
    R = []
    for key, label, rx, ry in pair_rows(b, summary, x, y):
        hs = key == "handshakes"
        R.append(f"- {what} {label}: {'handshakes/s' if hs else 'throughput'} "
                 f"{fmt(ratio(rx['rps'], ry['rps']), '.2f')}x, "
                 f"p50 latency {fmt(ratio(rx['p50'], ry['p50']), '.2f')}x, sidecar CPU per "
                 f"{'handshake' if hs else 'request'} "
                 f"{fmt(ratio(rx['cpu10k'], ry['cpu10k']), '.2f')}x")
    return R


def report(b, command):
    """The sections of the report (stdout and docs/benchmarks.md): the isolated table (and the
    A/B one), the chain table, the ratios and the extras. `b` is a finished `measure.Bench`."""
    s = b.s
    summary = summarize(b)
    by = {c.key: c for c in b.scns}
    direct = by.get("direct")

    iso = pair_table(b, summary, "isolated-proxypilot", "isolated-nginx", "proxypilot", "nginx")
    if iso:
        iso = (f"Sidecar alone (same job, same worker count, static upstream): proxypilot "
               f"(`threads: {b.a.threads}`) and nginx (`worker_processes {b.a.threads}`), both "
               f"terminating TLS for {HOST}, dropping `Authorization`, adding "
               "`Proxy-Tokenizer` and forwarding with keep-alive to the null tokenizer (nginx "
               "`return 200`, plain HTTP). CPU = the sidecar's utime + stime (nginx: master + "
               f"workers) per request; median of {s.runs} run(s)"
               + (f" ({s.unloaded_runs} for the serial row)" if s.unloaded_runs > s.runs
                  else "") + ", req/s min–max in brackets. "
               + (f"The sidecar runs on CPU {b.pin_cpus[0]}, h2load and the upstream on CPU "
                  f"{b.pin_cpus[1]} (`taskset`; `--no-pin` to turn off).\n\n" if b.pin_cpus
                  else "Not pinned to CPUs.\n\n")
               + iso)
        line = unloaded_pairs(b, "isolated-proxypilot", "isolated-nginx", "proxypilot", "nginx")
        iso += f"\n\n{line}" if line else ""
    ab = pair_table(b, summary, "isolated-proxypilot-B", "isolated-proxypilot", "B", "A")
    if ab:
        ab = (f"A/B, sidecar alone: B = `{b.a.ab}` (sha256 {b.meta.get('bin_b_sha256')}), A = "
              f"`{b.a.bin}` (sha256 {b.meta['bin_sha256']}), same setup, interleaved in the "
              "same run.\n\n" + ab)
        line = unloaded_pairs(b, "isolated-proxypilot-B", "isolated-proxypilot", "B", "A")
        ab += f"\n\n{line}" if line else ""

    L = []
    add = L.append
    add("| scenario | client | req/s (min–max) | p50 ms | p99 ms | +p50 vs direct ms | "
        "sidecar peak RSS MiB | sidecar CPU s/10k req | tokenizer CPU s/10k req | errors | note |")
    add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for mode in b.modes:
        for c in b.scns:
            row = summary.get((c.key, mode.key))
            if c.isolated or not row:
                continue
            dp50 = None
            if direct and (direct.key, mode.key) in summary and c is not direct:
                d = summary[(direct.key, mode.key)]["p50"]
                dp50 = row["p50"] - d if row["p50"] is not None and d is not None else None
            errs = str(row["bad"]) + (" (" + "; ".join(row["errors"]) + ")" if row["errors"]
                                      else "")
            add(f"| {c.label} | {mode.key} | {fmt(row['rps'], ',.0f')}{spread(row)} | "
                f"{fmt(row['p50'], '.3f')} | {fmt(row['p99'], '.2f')} | {fmt(dp50, '+.3f')} | "
                f"{fmt(row['hwm'])} | {fmt(row['cpu10k'], '.2f')} | {fmt(row['tok10k'], '.2f')} | "
                f"{errs} | {c.note} |")
    pinned = (f" The serial rows of direct and of the sidecars run pinned: the sidecar on CPU "
              f"{b.pin_cpus[0]}, h2load, our tokenizer and the upstream on CPU {b.pin_cpus[1]}."
              if b.pin_cpus else "")
    table = ("The whole chain (client -> sidecar -> our tokenizer -> upstream), and the "
             f"relays.{pinned}\n\n" + "\n".join(L)) if len(L) > 2 else ""
    line = unloaded_pairs(b, "proxypilot", "nginx", "proxypilot", "nginx as sidecar")
    table += f"\n\n{line}" if table and line else ""

    R = pair_ratios(b, summary, "isolated-proxypilot", "isolated-nginx",
                    "sidecar alone, proxypilot/nginx")
    R += pair_ratios(b, summary, "isolated-proxypilot-B", "isolated-proxypilot",
                     "A/B, sidecar alone, B/A")
    for other in ("nginx", "mitmproxy"):
        R += pair_ratios(b, summary, "proxypilot", other, f"proxypilot/{other}")
    for prefix, what in (("relay-spares", "relay"), ("relaytls-spares", "TLS relay")):
        with_spares = [c.key for c in b.scns if c.key.startswith(prefix)]
        if len(with_spares) != 2:
            continue
        for mode in b.modes:
            z, n = summary.get((with_spares[0], mode.key)), summary.get((with_spares[1], mode.key))
            if z and n:
                R.append(f"- {what} with {with_spares[1][len(prefix):]} spares / without, "
                         f"{mode.short}: throughput {fmt(ratio(n['rps'], z['rps']), '.2f')}x, "
                         f"p50 {n['p50']:.2f} ms vs {z['p50']:.2f} ms")
    ratios = "\n".join(R)

    X = []
    if "idle" in b.extra:
        many = b.extra.get("many", {})
        pa = lambda m: f"{m['pss']:.1f} ({m['anon']:.1f})" if m else "–"  # noqa: E731
        X.append("Memory as PSS, MiB (each shared page divided among the processes mapping it, "
                 "so nginx's master and workers add up to what they use together); in brackets "
                 "its anonymous part (heap, stacks), which is what clients grow: the file-backed "
                 "rest (binary, libraries) is also divided with every other process of the same "
                 "binary in this run. Peak PSS is sampled every 200 ms; each proxy's "
                 f"after-load figure is read {AFTER_LEFT_S} s after its own clients left. Peak RSS "
                 "(VmHWM summed over the processes, shared pages counted in each) for reference.")
        X.append("")
        X.append(f"| process | idle PSS MiB (after start + 1 request) | peak PSS MiB with "
                 f"{s.many_clients} keep-alive clients | PSS MiB {AFTER_LEFT_S} s after they "
                 "left | peak RSS MiB (VmHWM) | requests ok / failed |")
        X.append("|---|---:|---:|---:|---:|---|")
        for k, v in b.extra["idle"].items():
            m = many.get(k)
            X.append(f"| {v['label']} | {pa(v)} | {pa(m and m['peak'])} | "
                     f"{pa(m and m.get('after'))} | {fmt(m and m['hwm'])} | "
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
                 f"no resumption, SNI {HOST}, client = Python ssl), against the sidecars alone "
                 "(the same processes as the first table):")
        X.append("")
        X.append("| server | median ms | p99 ms | handshakes/s |")
        X.append("|---|---:|---:|---:|")
        for k, v in b.extra["handshakes"].items():
            X.append(f"| {k} | {v['p50']:.3f} | {v['p99']:.3f} | {v['rate']:,.0f} |")
        X.append("")
    if "connect" in b.extra:
        c = b.extra["connect"]
        X.append("The proxy (CONNECT) listener against the TLS listener, one sidecar alone (null "
                 "tokenizer), one client at a time (Python): a new connection with one request "
                 "(TCP, then `CONNECT` and its 200 for the proxy listener, TLS, GET) and requests "
                 "on one kept-alive connection; both arms in every run, alternating which goes "
                 "first; sidecar CPU from /proc around each arm:")
        X.append("")
        X.append("| listener | new connection + request: median ms | p99 ms | sidecar CPU µs | "
                 "kept-alive request: median ms | p99 ms | sidecar CPU µs |")
        X.append("|---|---:|---:|---:|---:|---:|---:|")
        for k, v in c.items():
            X.append(f"| {k} ({v['n_new']} + {v['n_ka']}) | {v['new_p50']:.3f} | "
                     f"{v['new_p99']:.3f} | {v['new_cpu_us']:.0f} | {v['ka_p50']:.3f} | "
                     f"{v['ka_p99']:.3f} | {v['ka_cpu_us']:.0f} |")
        t, p = c.get("TLS listener"), c.get("proxy listener (CONNECT)")
        if t and p:
            X.append("")
            X.append(f"CONNECT adds {p['new_p50'] - t['new_p50']:+.3f} ms and "
                     f"{p['new_cpu_us'] - t['new_cpu_us']:+.0f} µs of sidecar CPU per new "
                     f"connection ({ratio(p['new_cpu_us'], t['new_cpu_us']):.2f}x the CPU); a "
                     f"request inside the tunnel costs {ratio(p['ka_cpu_us'], t['ka_cpu_us']):.2f}x "
                     f"the CPU and {ratio(p['ka_p50'], t['ka_p50']):.2f}x the median latency of "
                     "one on the "
                     "TLS listener.")
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
    return iso, ab, table, ratios, extras


def markdown(b, command, iso, ab, table, ratios, extras):
    s, a = b.s, b.a
    v = versions(a, mitmproxy=b.chain)
    mc = machine()
    lb, la = b.meta["load_before"], b.meta["load_after"]
    quiet = lb[0] < 0.5
    spares = ("This binary accepts `proxypilot.tokenizer.spares`, so the relay scenario runs "
              f"with `spares: 0` and `spares: {s.spares}`") if b.spares else (
        "Spares: not implemented yet (this binary refuses `proxypilot.tokenizer.spares`); the "
        f"script compares 0 with `--spares {s.spares}` once it does")
    if not b.chain:
        spares = "Not run this time (`--only`)"
    ab_version = (f"; B (`--ab`): proxypilot {v['proxypilot_b']}, binary sha256 "
                  f"{b.meta['bin_b_sha256']}" if a.ab else "")
    ab_setup = (f"\n- **A/B**: `--ab {a.ab}` runs that binary as a third sidecar alone (\"B\"), "
                "interleaved with the others in the same run;\n  the second table compares it "
                "with the `--bin` binary (\"A\")." if a.ab else "")
    results = "\n\n".join(x for x in (iso, ab, table, ratios, extras) if x)
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
- Versions: proxypilot {v["proxypilot"]}, binary sha256 {b.meta["bin_sha256"]}{ab_version}; {v["nginx"]};
  {v["mitmproxy"]}; h2load {v["h2load"]}; {v["openssl"]}; Python {v["python"]}

```
{chr(10).join(mc["lscpu"])}
```

## Setup

Everything runs on 127.0.0.1 on this one machine, so the load generator competes with the
proxies for the same cores: compare rows with each other, not with other machines.

- **Sidecar alone** (the first table): proxypilot (`threads: {a.threads}`) and nginx
  (`worker_processes {a.threads}`: the same count, `--threads`) do the job they do below (TLS for
  {HOST}, drop `Authorization`, add `Proxy-Tokenizer`) but forward with keep-alive to a static
  upstream instead of our tokenizer: nginx answering `return 200` with the same body over plain
  HTTP (checked first: it must get no `Authorization`, the sealed secret and `Host: {HOST}`).
  Nothing behind the sidecar limits it, so the table compares the sidecars' own work. CPU µs per
  request is the sidecar's utime + stime from /proc (nginx: master and workers) during the
  measured part of a run divided by the responses it gave; the handshake row divides by full
  TLS handshakes (a new connection each, no request).{ab_setup}
- **direct**: h2load to the upstream, nginx (1 worker) answering a fixed {len(BODY)}-byte JSON
  body over TLS (ECDSA P-256 certificate for {HOST} from a throwaway CA made with openssl at
  the start of the run), keep-alive on. The limit.
- **proxypilot**: `proxypilot serve` (threads: {a.threads}, RUST_LOG={a.rust_log}) minting its certificate
  for the SNI, dropping the dummy `Authorization`, adding `Proxy-Tokenizer`, and sending
  absolute-form requests over pooled HTTP/1.1 to `proxypilot tokenizer` (threads 2), which opens
  the sealed secret, writes the real `Authorization` and forwards over TLS to the upstream.
- **nginx as sidecar**: nginx (`worker_processes {a.threads}`, as many as the sidecar's
  threads) with a static certificate, `proxy_set_header Authorization ""`, `Proxy-Tokenizer:
  <sealed>`, `Host: {HOST}`, origin-form to the same tokenizer with `keepalive 32`,
  `proxy_http_version 1.1`, `Connection ""`, `proxy_buffering off` (needed for server-sent
  events).
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
- In these chain rows our tokenizer (which opens the sealed secret on every request) usually
  limits throughput for proxypilot and nginx alike; hence the sidecar-alone table.
- Every path is checked first: the upstream must see `Authorization: Bearer <real token>`,
  no `Proxy-Tokenizer`, and `Host: {HOST}`.

Client modes (h2load, same request for all: `GET /user`, `Authorization: Bearer dummy`):
{chr(10).join(f"- **{m.key}**: {m.label}" for m in b.modes)}
- **handshakes** (sidecars alone): full TLS handshakes for {s.duration:g} s per run,
  {s.handshake_conns} at a time from Python threads (connect, handshake, close; no resumption,
  no request)

Figures: req/s = 2xx responses per second; p50/p99 from h2load's per-request log;
"+p50 vs direct" = p50 minus direct's p50 in the same mode (under load this includes queueing:
the **serial** row is the per-request cost of the hop); sidecar peak RSS = VmHWM (reset before
each run, max over runs); CPU = utime + stime from /proc per 10,000 responses (the sidecar
process, nginx: master + workers; the tokenizer separately). Every scenario's run i comes
before any run i+1, and the sidecars compared take turns at going first. The unloaded (serial)
rows of the sidecars alone and of the pinned chain get {s.unloaded_runs} runs: the
difference they decide is about one run's noise, so each table also compares them run by run
(run i of one against run i of the other, measured back to back).

## Results

{results}
"""


