"""The shell's trust bootstrap (deploy/shell/proxypilot-trust), end to end.

It runs as it would in the shell container, but in a private mount namespace: copies of
/etc/hosts, /etc/ssl/certs, /usr/local/share/ca-certificates, /etc/profile.d and this Python's
certifi bundles are bind-mounted over the real ones, so the script edits the copies and nothing
on the machine changes. It is started *before* the sidecar (it must wait), then real clients run
in the same namespace against the routed names with no CA flags and no base URLs: curl, Python
httpx with plain certifi, the Anthropic SDK, Node fetch (with the script's environment, as a
login shell gets it), git ls-remote and gh api. The real token must reach the test upstream.
"""

import hashlib
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from stack import HOSTS, REAL, ROOT, headers_of, skip_unless_ci, start_sidecar
from standin import Standin

SCRIPT = ROOT / "deploy" / "shell" / "proxypilot-trust"
# Environment a client must not inherit from the machine: it would decide trust for it.
SCRUB = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
         "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
         "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy", "GH_HOST", "GH_TOKEN",
         "GITHUB_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "PROXYPILOT_TRUST_DIR")


def port443_free():
    import socket

    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as s:
            try:
                s.bind((addr, 443))
            except OSError:
                return False
    return True


class Sandbox:
    """Copies of the files the script edits, and a shell prefix that mounts them in place."""

    def __init__(self, d):
        self.d = d
        d.mkdir()
        self.mounts = []  # (copy, real path)
        self.copy("/etc/hosts", "hosts")
        self.copy("/etc/ssl/certs", "certs")
        self.copy("/usr/local/share/ca-certificates", "local-ca")
        self.copy("/etc/profile.d", "profile.d")
        import certifi

        self.site = Path(certifi.__file__).resolve().parents[1]
        for i, bundle in enumerate(sorted(self.site.glob("**/certifi/cacert.pem"))):
            self.copy(str(bundle), f"certifi-{i}.pem")
        self.trust_dir = d / "trust"
        self.home = d / "home"
        self.home.mkdir()

    def copy(self, real, name):
        dst = self.d / name
        if Path(real).is_dir():
            shutil.copytree(real, dst, symlinks=True)
        else:
            shutil.copy2(real, dst)
        self.mounts.append((dst, real))

    def env(self):
        env = {k: v for k, v in os.environ.items() if k not in SCRUB}
        env.update(HOME=str(self.home), PROXYPILOT_TRUST_DIR=str(self.trust_dir),
                   PROXYPILOT_CERTIFI_DIRS=str(self.site), GIT_TERMINAL_PROMPT="0",
                   GH_NO_UPDATE_NOTIFIER="1", GH_PROMPT_DISABLED="1")
        return env

    def run_inside(self, body, timeout=240, background=False):
        """`body` (sh) in a private mount namespace with the copies mounted."""
        mounts = "\n".join(f"mount --bind '{c}' '{r}'" for c, r in self.mounts)
        script = self.d / f"inside-{time.time_ns()}.sh"
        script.write_text("set -e\n" + mounts + "\nset +e\n" + textwrap.dedent(body))
        args = ["unshare", "-m", "--propagation", "private", "sh", str(script)]
        if background:
            return subprocess.Popen(args, env=self.env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        return subprocess.run(args, env=self.env(), capture_output=True, text=True,
                              timeout=timeout)

    def digest(self):
        """A fingerprint of every file the script may edit."""
        h = hashlib.sha256()
        for copy, _ in self.mounts + [(self.trust_dir, "")]:
            paths = sorted(p for p in Path(copy).rglob("*")) if Path(copy).is_dir() else [copy]
            for p in paths:
                if p.is_file() and not p.is_symlink():
                    h.update(str(p).encode() + p.read_bytes())
                elif p.is_symlink():
                    h.update(str(p).encode() + os.readlink(p).encode())
        return h.hexdigest()


@pytest.fixture(scope="module")
def sandbox(workdir):
    if not shutil.which("unshare"):
        skip_unless_ci("unshare is not installed")
    return Sandbox(workdir / "trust-sandbox")


CLIENTS = """
    echo "--- clients"
    curl -sS --max-time 20 -H 'Authorization: Bearer dummy' -o /dev/null \\
        -w 'RESULT curl %{http_code}\\n' https://api.github.com/user/curl
    python3 -c 'import httpx; r = httpx.get("https://api.github.com/user/httpx",
        headers={"Authorization": "Bearer dummy"}); print("RESULT httpx", r.status_code)'
    python3 -c 'import anthropic
m = anthropic.Anthropic(api_key="dummy").messages.create(model="claude-test", max_tokens=8,
    messages=[{"role": "user", "content": "through the sidecar"}])
print("RESULT anthropic", m.content[0].text.replace(" ", "_"))'
    (set -a; . /etc/profile.d/proxypilot.sh; set +a; node -e '
        fetch("https://api.github.com/user/node", {headers: {authorization: "Bearer dummy"}})
          .then(r => console.log("RESULT node " + r.status))
          .catch(e => console.log("RESULT node FAIL " + (e.cause || e)))')
    git ls-remote https://api.github.com/proxypilot/trust.git >/dev/null 2>git.err
    echo "RESULT git $?" ; cat git.err
    GH_TOKEN=dummy gh api /user > gh.out 2>&1; echo "RESULT gh $?"; cat gh.out
"""


def results(out):
    return {l.split()[1]: " ".join(l.split()[2:]) for l in out.splitlines()
            if l.startswith("RESULT ")}


def test_bootstrap_waits_then_every_runtime_trusts_the_sidecar(bin_path, workdir, tokenizer,
                                                                 upstream, sandbox):
    if not port443_free():
        skip_unless_ci("port 443 on 127.0.0.1 or ::1 is in use: the SDKs and gh need the "
                       "sidecar there")
    # The bootstrap starts first and must wait for the sidecar.
    p = sandbox.run_inside(f"""
        cd "$HOME"
        '{SCRIPT}' --timeout 60 || exit 1
        {CLIENTS}
    """, background=True)
    time.sleep(2)
    assert p.poll() is None, p.stdout.read()
    m = upstream.mark()
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-trust", port=443)
    try:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out
        assert "waiting for the sidecar" in out, out
        got = results(out)
        assert got == {"curl": "200", "httpx": "200",
                       "anthropic": "echo:_through_the_sidecar", "node": "200", "git": "0",
                       "gh": "0"}, out
        # The real token reached the upstream for every client, the dummy never.
        seen = upstream.wait_since(m, n=7)
        gh_paths = [e for e in seen if headers_of(e).get("authorization")]
        for e in gh_paths:
            assert headers_of(e)["authorization"] == [f"Bearer {REAL['api.github.com']}"], e
        paths = {e["path"] for e in seen}
        assert {"/user/curl", "/user/httpx", "/user/node", "/user"} <= paths, paths
        assert any(p.startswith("/proxypilot/trust.git/info/refs") for p in paths), paths
        msgs = [e for e in seen if e["path"] == "/v1/messages"]
        assert msgs and headers_of(msgs[0])["x-api-key"] == [REAL["api.anthropic.com"]]
        # What it wrote: hosts on both loopbacks, the env file, our files.
        hosts = (sandbox.d / "hosts").read_text()
        for h in HOSTS:
            assert f"127.0.0.1 {h}\n" in hosts and f"::1 {h}\n" in hosts, hosts
        env = (sandbox.trust_dir / "env").read_text()
        for key in ["NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE",
                    "GIT_SSL_CAINFO", "DENO_CERT", "NODE_USE_SYSTEM_CA"]:
            assert f"{key}=" in env, env
        profile = (sandbox.d / "profile.d" / "proxypilot.sh").read_text()
        assert "export NODE_EXTRA_CA_CERTS=" in profile
        ca = (sandbox.trust_dir / "ca.pem").read_text()
        assert ca.strip() == s.ca.read_text().strip()
        bundle = (sandbox.trust_dir / "ca-bundle.pem").read_text()
        assert ca.splitlines()[1] in bundle and bundle.count("BEGIN CERTIFICATE") > 10

        # A second run, with the self-test: nothing changes, every runtime here passes.
        before = sandbox.digest()
        r = sandbox.run_inside(f"'{SCRIPT}' --check")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "nothing to change" in r.stdout, r.stdout
        assert sandbox.digest() == before
        table = {l.split()[0]: l.split()[1] for l in r.stdout.splitlines()[1:]
                 if len(l.split()) > 1 and l.split()[1] in ("ok", "FAIL", "-")}
        for runtime in ["curl", "python3+certifi", "node", "git", "gh"]:
            assert table.get(runtime) == "ok", r.stdout
        assert "FAIL" not in table.values(), r.stdout
        # The environment file works both ways it is meant to be read.
        r = sandbox.run_inside("""
            (set -a; . /etc/profile.d/proxypilot.sh; set +a; env | grep -c '^NODE_EXTRA_CA_CERTS=')
            (. /etc/profile.d/proxypilot.sh; env | grep -c '^SSL_CERT_FILE=')
            (set -a; . "$PROXYPILOT_TRUST_DIR/env"; set +a; env | grep -c '^GIT_SSL_CAINFO=')
        """)
        assert r.stdout.split() == ["1", "1", "1"], r.stdout + r.stderr
    finally:
        s.proc.stop()


def test_bootstrap_refuses_an_answer_that_is_not_a_pem_ca(pki, workdir):
    """Something answers on the port but it is not a proxypilot sidecar: a clear error, and
    nothing trusted."""
    fake = Standin(tls=(str(pki / "up.pem"), str(pki / "up.key"))).start()
    d = workdir / "trust-fake"
    d.mkdir()
    try:
        r = subprocess.run(
            [str(SCRIPT), "--port", str(fake.port), "--timeout", "5", "--no-hosts"],
            env={**os.environ, "PROXYPILOT_TRUST_DIR": str(d / "trust"),
                 "PROXYPILOT_PROFILE": str(d / "profile.sh"),
                 "PROXYPILOT_CERTIFI_DIRS": str(d)},
            capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r
        assert "is not a PEM certificate" in r.stderr and "{\"ok\"" in r.stderr, r.stderr
        assert not (d / "trust").exists()
    finally:
        fake.stop()


def test_bootstrap_gives_up_with_a_clear_message_when_nothing_answers(workdir):
    from stack import free_port

    t0 = time.time()
    r = subprocess.run([str(SCRIPT), "--port", str(free_port()), "--timeout", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "did not answer" in r.stderr and "within 2s" in r.stderr, r.stderr
    assert time.time() - t0 < 10


def test_bootstrap_with_a_proxy_sets_the_proxy_environment_and_no_hosts(workdir, proxied,
                                                                        upstream):
    """`--proxy URL`: no hosts entries; the environment sends the runtimes to the proxy
    listener, and --check passes through it with every runtime that reads HTTPS_PROXY. The API
    names point at a loopback address where nothing listens, so a runtime that ignored the
    proxy could reach nothing."""
    if not shutil.which("unshare"):
        skip_unless_ci("unshare is not installed")
    box = Sandbox(workdir / "trust-sandbox-proxy")
    hosts = box.d / "hosts"
    blackhole = "".join(f"127.0.0.9 {h}\n" for h in HOSTS + ["github.com"])
    hosts.write_text(hosts.read_text() + blackhole)
    before = hosts.read_text()
    m = upstream.mark()
    r = box.run_inside(f"""
        '{SCRIPT}' --port {proxied.sidecar.port} --proxy {proxied.url} --timeout 10 --check
        echo "RESULT exit $?"
        (set -a; . /etc/profile.d/proxypilot.sh; set +a
         curl -sS --max-time 20 -H 'Authorization: Bearer dummy' -o /dev/null \\
             -w 'RESULT curl %{{http_code}}\\n' https://api.github.com/user/via-proxy)
    """)
    out = r.stdout + r.stderr
    assert results(out) == {"exit": "0", "curl": "200"}, out
    assert hosts.read_text() == before  # no hosts entries
    env = (box.trust_dir / "env").read_text()
    for line in [f"HTTPS_PROXY={proxied.url}", f"https_proxy={proxied.url}",
                 "NO_PROXY=localhost,127.0.0.1,::1", "NODE_USE_ENV_PROXY=1"]:
        assert line + "\n" in env, env
    assert "HTTP_PROXY" not in env.replace("HTTPS_PROXY", "")
    table = {l.split()[0]: l.split()[1] for l in r.stdout.splitlines()
             if len(l.split()) > 1 and l.split()[1] in ("ok", "FAIL", "warn", "-")}
    for runtime in ["curl", "python3+certifi", "git", "gh"]:
        assert table.get(runtime) == "ok", r.stdout
    assert table.get("node") in ("ok", "warn"), r.stdout
    seen = upstream.wait_since(m, n=3)
    assert "/user/via-proxy" in {e["path"] for e in seen}
    for e in seen:
        if headers_of(e).get("authorization"):
            assert headers_of(e)["authorization"] == [f"Bearer {REAL['api.github.com']}"], e
