"""Real clients through the sidecar: curl, httpx (HTTP/2), the Anthropic and OpenAI SDKs, Node's
fetch, the gh CLI and git.

Each client runs as it would in the shell container: it resolves the API host by name to the
sidecar and trusts the sidecar's CA as its only extra certificate authority. The name resolution
comes from a private mount namespace (`unshare -m`) in which a temporary hosts file is bind-mounted
over /etc/hosts, mapping the API hosts to 127.0.0.1 and ::1; the machine's own /etc/hosts is never
touched. Every name a client might look up maps to loopback, so no client can send anything off
the machine. Each test then reads the echo upstream's request log to check that the real token
arrived, and neither the dummy nor any Proxy-* header did.
"""

import json
import socket
import subprocess

import pytest

from clients import assert_real_only, python_client, require, run_client, sent_json
from stack import DUMMY, HOSTS, headers_of, skip_unless_ci, start_sidecar, under_hosts

# Names the clients may look up: the routed hosts, and github.com, which gh knows as its host.
NAMES = HOSTS + ["github.com"]
@pytest.fixture(scope="module")
def client_home(workdir):
    """An empty HOME, so no client reads a user's configuration or credentials."""
    d = workdir / "client-home"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="module")
def hosts(workdir):
    p = workdir / "client-hosts"
    p.write_text(
        "127.0.0.1 localhost\n::1 localhost\n"
        + f"127.0.0.1 {' '.join(NAMES)}\n::1 {' '.join(NAMES)}\n"
    )
    require("unshare")
    r = subprocess.run(under_hosts(p, ["getent", "ahosts", "api.github.com"]),
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        skip_unless_ci("cannot bind-mount a hosts file in a private mount namespace: "
                       f"{r.stderr.strip()}")
    addrs = {line.split()[0] for line in r.stdout.splitlines()}
    assert addrs == {"127.0.0.1", "::1"}, r.stdout
    return p


# --- curl -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto,version,family,addr", [
    ("--http1.1", "1.1", "-4", "127.0.0.1"),
    ("--http2", "2", "-6", "::1"),
])
def test_curl_by_name(sidecar, upstream, hosts, client_home, proto, version, family, addr):
    """curl as the shell runs it: no --resolve, the name comes from the hosts file; both HTTP
    versions, each over one of the two loopback families. (test_sidecar.py covers --resolve.)"""
    m = upstream.mark()
    r = run_client(hosts, client_home, [
        "curl", "-sS", "--max-time", "60", proto, family, "--cacert", sidecar.ca,
        "-H", f"Authorization: Bearer {DUMMY}", "-H", "Content-Type: application/json",
        "--data", '{"title": "from curl"}',
        "-w", "\n%{http_code} %{http_version} %{remote_ip}",
        f"https://api.github.com:{sidecar.port}/repos/octo/repo/issues"])
    body, _, tail = r.stdout.rpartition("\n")
    assert tail.split() == ["200", version, addr], r.stdout
    assert json.loads(body)["method"] == "POST"
    e = upstream.wait_since(m)[0]
    assert (e["method"], e["path"]) == ("POST", "/repos/octo/repo/issues")
    assert sent_json(e) == {"title": "from curl"}
    assert_real_only(e, "api.github.com")


# --- Python httpx over HTTP/2 ---------------------------------------------------------------------

HTTPX_SCRIPT = """
    import asyncio, json, ssl, sys
    import httpx

    base, ca = sys.argv[1:3]
    ctx = ssl.create_default_context(cafile=ca)
    auth = {"Authorization": "Bearer dummy"}
    out = []

    def row(r):
        return {"version": r.http_version, "status": r.status_code, "json": r.json()}

    with httpx.Client(http2=True, verify=ctx, trust_env=False, timeout=60) as c:
        out.append(row(c.get(base + "/user", headers=auth)))
        out.append(row(c.post(base + "/repos/octo/repo/issues", headers=auth,
                              json={"title": "from httpx"})))

    async def many():
        # Several concurrent requests: streams multiplexed over the client's HTTP/2 connection.
        async with httpx.AsyncClient(http2=True, verify=ctx, trust_env=False, timeout=60) as c:
            rs = await asyncio.gather(*[c.get(f"{base}/user?i={i}", headers=auth)
                                        for i in range(4)])
        return [row(r) for r in rs]

    out += asyncio.run(many())
    print(json.dumps(out))
"""


def test_httpx_http2(sidecar, upstream, hosts, client_home):
    m = upstream.mark()
    out = python_client(hosts, client_home, HTTPX_SCRIPT,
                        f"https://api.github.com:{sidecar.port}", sidecar.ca)
    assert [(o["version"], o["status"]) for o in out] == [("HTTP/2", 200)] * 6, out
    assert [o["json"]["method"] for o in out] == ["GET", "POST"] + ["GET"] * 4
    got = upstream.wait_since(m, n=6)
    assert len(got) == 6, got
    by_path = {e["path"]: e for e in got}
    assert set(by_path) == {"/user", "/repos/octo/repo/issues"} | {f"/user?i={i}" for i in range(4)}
    assert sent_json(by_path["/repos/octo/repo/issues"]) == {"title": "from httpx"}
    for e in got:
        assert_real_only(e, "api.github.com")


# --- the Anthropic SDK ----------------------------------------------------------------------------

ANTHROPIC_SCRIPT = """
    import json, sys
    import anthropic

    client = anthropic.Anthropic(base_url=sys.argv[1], api_key="dummy", max_retries=0, timeout=60)
    msgs = [{"role": "user", "content": "hello through the sidecar"}]
    m = client.messages.create(model="claude-e2e", max_tokens=32, messages=msgs)
    with client.messages.stream(model="claude-e2e", max_tokens=32,
                                messages=[{"role": "user", "content": "stream me please"}]) as s:
        deltas = list(s.text_stream)
        final = s.get_final_message()
    print(json.dumps({
        "type": type(m).__name__, "id": m.id, "model": m.model, "text": m.content[0].text,
        "stop_reason": m.stop_reason, "deltas": deltas, "final": final.content[0].text,
        "final_stop": final.stop_reason,
    }))
"""


def test_anthropic_sdk(sidecar, upstream, hosts, client_home):
    m = upstream.mark()
    # The CA comes from SSL_CERT_FILE, as in the shell container: the SDK's code is unchanged.
    out = python_client(hosts, client_home, ANTHROPIC_SCRIPT,
                        f"https://api.anthropic.com:{sidecar.port}",
                        env={"SSL_CERT_FILE": str(sidecar.ca)})
    assert out["type"] == "Message" and out["id"] == "msg_echo", out
    assert out["model"] == "claude-e2e" and out["stop_reason"] == "end_turn", out
    assert out["text"] == "echo: hello through the sidecar", out
    assert "".join(out["deltas"]) == out["final"] == "echo: stream me please", out
    assert len(out["deltas"]) > 1 and out["final_stop"] == "end_turn", out
    got = upstream.wait_since(m, n=2)
    assert [(e["method"], e["path"]) for e in got] == [("POST", "/v1/messages")] * 2, got
    first, second = map(sent_json, got)
    assert first["model"] == "claude-e2e" and first["max_tokens"] == 32
    assert first["messages"] == [{"role": "user", "content": "hello through the sidecar"}]
    assert second["stream"] is True and second["messages"][0]["content"] == "stream me please"
    for e in got:
        # However the SDK sends its key (x-api-key or Authorization), the sidecar drops it and
        # the tokenizer writes the real one as a bare x-api-key.
        assert_real_only(e, "api.anthropic.com", "x-api-key", "{}")
        assert "anthropic-version" in headers_of(e)


# --- the OpenAI SDK -------------------------------------------------------------------------------

OPENAI_SCRIPT = """
    import json, sys
    import openai

    client = openai.OpenAI(base_url=sys.argv[1], api_key="dummy", max_retries=0, timeout=60)
    c = client.chat.completions.create(
        model="gpt-e2e", messages=[{"role": "user", "content": "hello through the sidecar"}])
    stream = client.chat.completions.create(
        model="gpt-e2e", stream=True, messages=[{"role": "user", "content": "stream me please"}])
    deltas = [ch.choices[0].delta.content for ch in stream
              if ch.choices and ch.choices[0].delta.content]
    print(json.dumps({
        "type": type(c).__name__, "object": c.object, "model": c.model,
        "text": c.choices[0].message.content, "finish": c.choices[0].finish_reason,
        "deltas": deltas,
    }))
"""


def test_openai_sdk(sidecar, upstream, hosts, client_home):
    m = upstream.mark()
    out = python_client(hosts, client_home, OPENAI_SCRIPT,
                        f"https://api.openai.com:{sidecar.port}/v1",
                        env={"SSL_CERT_FILE": str(sidecar.ca)})
    assert out["type"] == "ChatCompletion" and out["object"] == "chat.completion", out
    assert out["model"] == "gpt-e2e" and out["finish"] == "stop", out
    assert out["text"] == "echo: hello through the sidecar", out
    assert len(out["deltas"]) > 1 and "".join(out["deltas"]) == "echo: stream me please", out
    got = upstream.wait_since(m, n=2)
    assert [(e["method"], e["path"]) for e in got] == [("POST", "/v1/chat/completions")] * 2, got
    first, second = map(sent_json, got)
    assert first["model"] == "gpt-e2e"
    assert first["messages"] == [{"role": "user", "content": "hello through the sidecar"}]
    assert second["stream"] is True
    for e in got:
        assert_real_only(e, "api.openai.com")


# --- Node's fetch ---------------------------------------------------------------------------------

NODE_SCRIPT = """
const base = process.argv[1];
const auth = { Authorization: "Bearer dummy" };
const out = [];
for (const [path, init] of [
  ["/user", { headers: auth }],
  ["/repos/octo/repo/issues", { method: "POST", body: JSON.stringify({ title: "from node" }),
                                headers: { ...auth, "Content-Type": "application/json" } }],
]) {
  const r = await fetch(base + path, init);
  out.push({ status: r.status, json: await r.json() });
}
console.log(JSON.stringify(out));
"""


def test_node_fetch(sidecar, upstream, hosts, client_home):
    require("node")
    m = upstream.mark()
    r = run_client(hosts, client_home,
                   ["node", "--input-type=module", "-e", NODE_SCRIPT,
                    f"https://api.github.com:{sidecar.port}"],
                   env={"NODE_EXTRA_CA_CERTS": str(sidecar.ca)})
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(o["status"], o["json"]["method"]) for o in out] == [(200, "GET"), (200, "POST")], out
    got = upstream.wait_since(m, n=2)
    assert [(e["method"], e["path"]) for e in got] == [
        ("GET", "/user"), ("POST", "/repos/octo/repo/issues")], got
    assert sent_json(got[1]) == {"title": "from node"}
    for e in got:
        assert_real_only(e, "api.github.com")


# --- git over HTTPS -------------------------------------------------------------------------------


def test_git_ls_remote(sidecar, upstream, hosts, client_home):
    """git's smart-HTTP discovery through the sidecar (the upstream answers an empty repository)."""
    require("git")
    m = upstream.mark()
    url = f"https://api.github.com:{sidecar.port}/octo/repo.git"
    r = run_client(hosts, client_home, [
        "git", "-c", f"http.sslCAInfo={sidecar.ca}",
        "-c", f"http.extraHeader=Authorization: Bearer {DUMMY}", "ls-remote", url],
        env={"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"})
    assert r.stdout.strip() == "", r.stdout
    e = upstream.wait_since(m)[0]
    assert e["path"] == "/octo/repo.git/info/refs?service=git-upload-pack", e
    assert headers_of(e)["user-agent"][0].startswith("git/"), e
    assert_real_only(e, "api.github.com")


# --- the gh CLI -----------------------------------------------------------------------------------


def port_free(port):
    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as s:
            try:
                s.bind((addr, port))
            except OSError:
                return False
    return True


@pytest.fixture(scope="module")
def sidecar443(bin_path, workdir, tokenizer):
    """gh has no option for another port: a second sidecar on 443, as in production."""
    if not port_free(443):
        skip_unless_ci("port 443 on 127.0.0.1 or ::1 is in use (or not bindable): the gh test "
                       "needs a sidecar there")
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-443", port=443)
    yield s
    s.proc.stop()


def test_gh_api(sidecar443, upstream, hosts, client_home, workdir):
    require("gh")
    cfg = workdir / "gh-config"
    cfg.mkdir(exist_ok=True)
    env = {"GH_TOKEN": DUMMY, "GH_CONFIG_DIR": str(cfg), "SSL_CERT_FILE": str(sidecar443.ca),
           "GH_NO_UPDATE_NOTIFIER": "1", "GH_PROMPT_DISABLED": "1"}
    m = upstream.mark()
    r = run_client(hosts, client_home, ["gh", "api", "--include", "/user"], env=env)
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/2.0 200 OK\n"), r.stdout  # Go's net/http negotiated h2
    assert json.loads(body)["login"] == "echo-user", r.stdout
    r = run_client(hosts, client_home,
                   ["gh", "api", "repos/octo/repo/issues", "-f", "title=from gh", "--jq", ".method"],
                   env=env)
    assert r.stdout.strip() == "POST", r.stdout
    got = upstream.wait_since(m, n=2)
    assert [(e["method"], e["path"]) for e in got] == [
        ("GET", "/user"), ("POST", "/repos/octo/repo/issues")], got
    assert sent_json(got[1]) == {"title": "from gh"}
    for e in got:
        assert headers_of(e)["user-agent"][0].startswith("GitHub CLI"), e
        assert_real_only(e, "api.github.com")
