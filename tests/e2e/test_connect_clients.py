"""Real clients through the sidecar's forward-proxy (CONNECT) listener: curl (HTTP/1.1 and
HTTP/2), httpx over HTTP/2, the Anthropic SDK, Node's built-in http/https/tls, git and gh; then an
unrouted host (403) and a passthrough host (tunnelled untouched) with curl.

test_clients.py drives the same clients at the sidecar's TLS listener by pointing the API names at
it with a hosts file. Here the clients instead find the sidecar the way a shell container without
such a hosts file would: through HTTPS_PROXY (or the client's own proxy setting), which makes them
send `CONNECT api.github.com:443` and speak TLS inside the tunnel, trusting the sidecar's CA. The
URLs are the ordinary ones (https://api.github.com/..., default port 443).

So that a client which ignored the proxy cannot reach anything, every client runs in a private
mount namespace (`unshare -m`) whose /etc/hosts maps every name it might look up (the API hosts,
github.com, example.com and the passthrough name files.pypi.test) to 127.0.0.9, where nothing
listens: a direct connection fails, and no request can leave the machine. Only the proxy, given by
its address 127.0.0.1:PORT, is reachable, and NO_PROXY exempts just the loopback names. The
sidecar resolves names with its own hosts file (conftest.proxied), so it can dial the passthrough
mirror, and the echo upstream behind the tokenizer is reached through the tokenizer's
--connect-to. As in test_clients.py, the inherited environment is scrubbed of proxy, trust and
credential variables and HOME is empty.

Each test reads the echo upstream's request log: the routed request must have arrived with the
real credential the tokenizer injected and nothing of the client's dummy. The passthrough test
reads the mirror's log instead, where the client's own dummy must have arrived untouched.
"""

import json
import subprocess

import pytest

from clients import assert_real_only, python_client, require, run_client, sent_json
from stack import DUMMY, HOSTS, headers_of, skip_unless_ci, under_hosts

# Names the clients may look up: the routed hosts, github.com (gh's host), an unrouted host and
# the passthrough name. All go to 127.0.0.9, where nothing listens.
NOWHERE = "127.0.0.9"
NAMES = HOSTS + ["github.com", "example.com", "files.pypi.test"]
@pytest.fixture(scope="module")
def home(workdir):
    """An empty HOME, so no client reads a user's configuration or credentials."""
    d = workdir / "connect-client-home"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="module")
def hosts(workdir):
    """The clients' /etc/hosts: every name they might look up goes nowhere."""
    p = workdir / "connect-client-hosts"
    p.write_text(f"127.0.0.1 localhost\n::1 localhost\n{NOWHERE} {' '.join(NAMES)}\n")
    require("unshare")
    for name in NAMES:
        r = subprocess.run(under_hosts(p, ["getent", "ahosts", name]),
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            skip_unless_ci("cannot bind-mount a hosts file in a private mount namespace: "
                           f"{r.stderr.strip()}")
        assert {line.split()[0] for line in r.stdout.splitlines()} == {NOWHERE}, (name, r.stdout)
    return p


def curl(proxied, hosts, home, *args, check=True):
    """curl with HTTPS_PROXY from the environment (not -x), verbose; (code, version, body, run)."""
    r = run_client(hosts, home, [
        "curl", "-sS", "-v", "--max-time", "20", *map(str, args),
        "-w", "\n%{http_code} %{http_version} %{remote_ip} %{remote_port}"],
        env={"HTTPS_PROXY": proxied.url}, check=check)
    body, _, tail = r.stdout.rpartition("\n")
    return tail.split(), body, r


def assert_went_through_proxy(proxied, tail, stderr, target):
    """curl connected to the proxy only, and asked it for `target`."""
    assert tail[2:] == ["127.0.0.1", str(proxied.port)], tail
    assert f"> CONNECT {target} HTTP/1.1" in stderr, stderr
    assert "< HTTP/1.1 200 Connection Established" in stderr, stderr


# --- curl -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto,version", [("--http1.1", "1.1"), ("--http2", "2")])
def test_curl(proxied, upstream, hosts, home, proto, version):
    require("curl")
    m = upstream.mark()
    tail, body, r = curl(
        proxied, hosts, home, proto, "--cacert", proxied.sidecar.ca,
        "-H", f"Authorization: Bearer {DUMMY}", "-H", "Content-Type: application/json",
        "--data", '{"title": "from curl via CONNECT"}',
        "https://api.github.com/repos/octo/repo/issues")
    assert tail[:2] == ["200", version], (tail, r.stderr)
    assert_went_through_proxy(proxied, tail, r.stderr, "api.github.com:443")
    assert json.loads(body)["method"] == "POST"
    e = upstream.wait_since(m)[0]
    assert (e["method"], e["path"]) == ("POST", "/repos/octo/repo/issues")
    assert sent_json(e) == {"title": "from curl via CONNECT"}
    assert_real_only(e, "api.github.com")


# --- Python httpx over HTTP/2 ---------------------------------------------------------------------

HTTPX_SCRIPT = """
    import json, ssl, sys
    import httpx

    ctx = ssl.create_default_context(cafile=sys.argv[1])
    auth = {"Authorization": "Bearer dummy"}
    out = []
    # trust_env (the default) takes the proxy from HTTPS_PROXY.
    with httpx.Client(http2=True, verify=ctx, timeout=30) as c:
        for r in (c.get("https://api.openai.com/v1/models", headers=auth),
                  c.post("https://api.openai.com/v1/embeddings", headers=auth,
                         json={"input": "from httpx via CONNECT"})):
            out.append({"version": r.http_version, "status": r.status_code,
                        "method": r.json()["method"]})
    print(json.dumps(out))
"""


def test_httpx_http2(proxied, upstream, hosts, home):
    m = upstream.mark()
    out = python_client(hosts, home, HTTPX_SCRIPT, proxied.sidecar.ca,
                        env={"HTTPS_PROXY": proxied.url})
    assert out == [{"version": "HTTP/2", "status": 200, "method": "GET"},
                   {"version": "HTTP/2", "status": 200, "method": "POST"}], out
    got = upstream.wait_since(m, n=2)
    assert [(e["method"], e["path"]) for e in got] == [
        ("GET", "/v1/models"), ("POST", "/v1/embeddings")], got
    assert sent_json(got[1]) == {"input": "from httpx via CONNECT"}
    for e in got:
        assert_real_only(e, "api.openai.com")


# --- the Anthropic SDK ----------------------------------------------------------------------------

ANTHROPIC_SCRIPT = """
    import json
    import anthropic

    # Everything from the environment: ANTHROPIC_API_KEY, HTTPS_PROXY, SSL_CERT_FILE; the
    # default base URL (https://api.anthropic.com).
    client = anthropic.Anthropic(max_retries=0, timeout=30)
    m = client.messages.create(model="claude-e2e", max_tokens=32,
                               messages=[{"role": "user", "content": "hello via CONNECT"}])
    print(json.dumps({"base": str(client.base_url), "type": type(m).__name__,
                      "text": m.content[0].text, "stop_reason": m.stop_reason}))
"""


def test_anthropic_sdk(proxied, upstream, hosts, home):
    m = upstream.mark()
    # The CA comes from SSL_CERT_FILE, as in test_clients.py: the SDK's code is unchanged.
    out = python_client(hosts, home, ANTHROPIC_SCRIPT,
                        env={"ANTHROPIC_API_KEY": DUMMY, "HTTPS_PROXY": proxied.url,
                             "SSL_CERT_FILE": str(proxied.sidecar.ca)})
    assert out == {"base": "https://api.anthropic.com", "type": "Message",
                   "text": "echo: hello via CONNECT", "stop_reason": "end_turn"}, out
    got = upstream.wait_since(m)
    assert [(e["method"], e["path"]) for e in got] == [("POST", "/v1/messages")], got
    assert sent_json(got[0])["messages"] == [{"role": "user", "content": "hello via CONNECT"}]
    # The anthropic route's secret is sealed for x-api-key: the real key arrives there, bare.
    assert_real_only(got[0], "api.anthropic.com", "x-api-key", "{}")
    assert "anthropic-version" in headers_of(got[0])


# --- Node (built-ins only: v20 has no NODE_USE_ENV_PROXY) -----------------------------------------

NODE_SCRIPT = r"""
const http = require("http"), https = require("https"), tls = require("tls"), fs = require("fs");
const [proxyPort, caPath] = process.argv.slice(1);
const ca = fs.readFileSync(caPath);
const host = "api.github.com";

// One CONNECT tunnel per request; TLS inside it, verified against the sidecar's CA only.
function tunnel() {
  return new Promise((resolve, reject) => {
    const req = http.request({ method: "CONNECT", host: "127.0.0.1", port: Number(proxyPort),
                               path: `${host}:443`, headers: { Host: `${host}:443` } });
    req.on("connect", (res, socket) => {
      if (res.statusCode !== 200) reject(new Error(`CONNECT answered ${res.statusCode}`));
      else resolve(socket);
    });
    req.on("error", reject);
    req.end();
  });
}

async function request(method, path, body) {
  const socket = await tunnel();
  return new Promise((resolve, reject) => {
    const headers = { Authorization: "Bearer dummy" };
    if (body) Object.assign(headers, { "Content-Type": "application/json",
                                       "Content-Length": Buffer.byteLength(body) });
    const req = https.request({
      method, host, path, headers,
      createConnection: () => tls.connect({ socket, servername: host, ca }),
    }, (res) => {
      let data = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (data += c));
      res.on("end", () => {
        socket.destroy();
        resolve({ status: res.statusCode, method: JSON.parse(data).method,
                  authorized: res.socket.authorized, alpn: res.socket.alpnProtocol });
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}

(async () => {
  const out = [await request("GET", "/user"),
               await request("POST", "/repos/octo/repo/issues",
                             JSON.stringify({ title: "from node via CONNECT" }))];
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def test_node_connect(proxied, upstream, hosts, home):
    require("node")
    m = upstream.mark()
    r = run_client(hosts, home,
                   ["node", "-e", NODE_SCRIPT, str(proxied.port), str(proxied.sidecar.ca)])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(o["status"], o["method"], o["authorized"]) for o in out] == [
        (200, "GET", True), (200, "POST", True)], out
    got = upstream.wait_since(m, n=2)
    assert [(e["method"], e["path"]) for e in got] == [
        ("GET", "/user"), ("POST", "/repos/octo/repo/issues")], got
    assert sent_json(got[1]) == {"title": "from node via CONNECT"}
    for e in got:
        assert_real_only(e, "api.github.com")


# --- git over HTTPS -------------------------------------------------------------------------------


def test_git_ls_remote(proxied, upstream, hosts, home):
    """git's smart-HTTP discovery through the proxy (the upstream answers an empty repository)."""
    require("git")
    m = upstream.mark()
    r = run_client(hosts, home, [
        "git", "-c", f"http.extraHeader=Authorization: Bearer {DUMMY}",
        "ls-remote", "https://api.github.com/octo/repo.git"],
        env={"https_proxy": proxied.url, "GIT_SSL_CAINFO": str(proxied.sidecar.ca),
             "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"})
    assert r.stdout.strip() == "", r.stdout
    e = upstream.wait_since(m)[0]
    assert e["path"] == "/octo/repo.git/info/refs?service=git-upload-pack", e
    assert headers_of(e)["user-agent"][0].startswith("git/"), e
    assert_real_only(e, "api.github.com")


# --- the gh CLI -----------------------------------------------------------------------------------


def test_gh_api(proxied, upstream, hosts, home, workdir):
    """gh (Go's net/http) needs no port option here: the URL is api.github.com:443 as usual."""
    require("gh")
    cfg = workdir / "connect-gh-config"
    cfg.mkdir(exist_ok=True)
    env = {"GH_TOKEN": DUMMY, "GH_CONFIG_DIR": str(cfg), "HTTPS_PROXY": proxied.url,
           "SSL_CERT_FILE": str(proxied.sidecar.ca), "GH_NO_UPDATE_NOTIFIER": "1",
           "GH_PROMPT_DISABLED": "1"}
    m = upstream.mark()
    r = run_client(hosts, home, ["gh", "api", "--include", "/user"], env=env)
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/2.0 200 OK\n"), r.stdout  # h2 inside the tunnel
    assert json.loads(body)["login"] == "echo-user", r.stdout
    r = run_client(hosts, home, ["gh", "api", "repos/octo/repo/issues", "-f",
                                 "title=from gh via CONNECT", "--jq", ".method"], env=env)
    assert r.stdout.strip() == "POST", r.stdout
    got = upstream.wait_since(m, n=2)
    assert [(e["method"], e["path"]) for e in got] == [
        ("GET", "/user"), ("POST", "/repos/octo/repo/issues")], got
    assert sent_json(got[1]) == {"title": "from gh via CONNECT"}
    for e in got:
        assert headers_of(e)["user-agent"][0].startswith("GitHub CLI"), e
        assert_real_only(e, "api.github.com")


# --- unrouted and passthrough hosts ---------------------------------------------------------------


def test_curl_unrouted_is_refused(proxied, upstream, hosts, home):
    require("curl")
    m = upstream.mark()
    tail, _, r = curl(proxied, hosts, home, "-H", f"Authorization: Bearer {DUMMY}",
                      "https://example.com/", check=False)
    assert r.returncode == 56, (r.returncode, r.stderr)  # CONNECT tunnel failed
    assert "> CONNECT example.com:443 HTTP/1.1" in r.stderr, r.stderr
    assert "< HTTP/1.1 403" in r.stderr, r.stderr
    assert tail[2:] == ["127.0.0.1", str(proxied.port)], tail
    assert upstream.wait_since(m, timeout=0.5) == []


def test_curl_passthrough_is_untouched(proxied, upstream, hosts, home):
    require("curl")
    m, mm = upstream.mark(), proxied.mirror.mark()
    url = proxied.mirror_url + "/x"
    tail, body, r = curl(proxied, hosts, home, "--cacert", proxied.mirror_ca,
                         "-H", f"Authorization: Bearer {DUMMY}", url)
    assert tail[0] == "200", (tail, r.stderr)
    target = url.removeprefix("https://").removesuffix("/x")
    assert_went_through_proxy(proxied, tail, r.stderr, target)
    # The mirror's own certificate, not one minted by the sidecar.
    assert "issuer: CN=mirror upstream CA" in r.stderr, r.stderr
    assert json.loads(body)["path"] == "/x", body
    got = proxied.mirror.wait_since(mm)
    assert [(e["method"], e["path"]) for e in got] == [("GET", "/x")], got
    h = headers_of(got[0])
    assert h["authorization"] == [f"Bearer {DUMMY}"], h  # no injection, nothing stripped
    assert h["host"] == [target], h
    assert "proxy-tokenizer" not in h and "proxy-authorization" not in h, h
    assert upstream.wait_since(m, timeout=0.5) == []
