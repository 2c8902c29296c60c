"""Per-route method/path policy in the sidecar (`allow:`/`deny:` on a route): an allowed request
goes out with the real token; a refused one gets 403 naming the rule (400 for an ambiguous
path), is counted and logged, and nothing of it reaches the tokenizer or the upstream."""

import http.client
import json
import re
import time

import pytest

from stack import DUMMY, REAL, headers_of, run, start_sidecar

DENY = "* /repos/*/secret/**"
RULES = {"api.github.com": [
    'allow: ["GET,HEAD /**", "POST /repos/*/*/issues", "POST /graphql query"]',
    f'deny: ["{DENY}"]',
]}


@pytest.fixture(scope="module")
def psidecar(bin_path, workdir, tokenizer):
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-policy", route_extra=RULES)
    yield s
    s.proc.stop()


def call(s, method, path, http="--http1.1", host="api.github.com"):
    how = ["-I"] if method == "HEAD" else ["-X", method]  # curl -X HEAD would wait for a body
    return s.curl(path, host=host, extra=[http, "--path-as-is", *how,
                                          "-H", f"Authorization: Bearer {DUMMY}"])


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_allowed_requests_carry_the_real_token(psidecar, upstream, http):
    for method, path in (("GET", "/repos/o/r"), ("HEAD", "/user"),
                         ("POST", "/repos/o/r/issues")):
        m = upstream.mark()
        code, _, body, _ = call(psidecar, method, path, http)
        assert code == 200, (method, path, body)
        e = upstream.wait_since(m)[0]
        assert (e["method"], e["path"]) == (method, path)
        assert headers_of(e)["authorization"] == [f"Bearer {REAL['api.github.com']}"]


def graphql(s, query, http="--http1.1", raw=None):
    data = raw if raw is not None else json.dumps({"query": query})
    return s.curl("/graphql", extra=[http, "-H", f"Authorization: Bearer {DUMMY}",
                                     "-H", "Content-Type: application/json",
                                     "--data-binary", data])


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_graphql_queries_pass_whole_and_mutations_are_refused(psidecar, upstream, http):
    query = "query { viewer { login } repository(owner: \"o\", name: \"mutation {\") { id } }"
    m = upstream.mark()
    code, _, body, _ = graphql(psidecar, query, http)
    assert code == 200, body
    e = upstream.wait_since(m)[0]
    assert e["method"] == "POST" and e["body_len"] == len(json.dumps({"query": query}))
    assert headers_of(e)["authorization"] == [f"Bearer {REAL['api.github.com']}"]
    for refused in ["mutation { addStar(input: {starrableId: \"x\"}) { clientMutationId } }",
                    "query A { viewer { login } } mutation B { addStar { x } }",
                    "subscription { x }", "{ not graphql"]:
        m = upstream.mark()
        code, _, body, _ = graphql(psidecar, refused, http)
        assert code == 403 and "no allow rule matches POST" in body, (refused, body)
        time.sleep(0.2)
        assert upstream.since(m) == [], refused
    code, _, body, _ = graphql(psidecar, None, http, raw="x" * (70 * 1024))
    assert code == 413 and "64 KiB" in body, body


REFUSED = [  # method, path, status, what the answer names
    ("DELETE", "/repos/o/r", 403, "no allow rule matches DELETE"),
    ("POST", "/repos/o/r/pulls", 403, "no allow rule matches POST"),
    ("GET", "/repos/o/secret/x", 403, f'deny rule "{DENY}"'),
    ("GET", "/REPOS/O/SECRET", 403, f'deny rule "{DENY}"'),  # upstreams ignore the case
    ("GET", "/repos/o/secre%74/x", 403, f'deny rule "{DENY}"'),  # and decode %-escapes
    ("GET", "/repos/o/x/../secret/y", 400, "dot segment"),
    ("GET", "/repos/o/x/%2e%2e/secret/y", 400, "dot segment"),
    ("GET", "/repos/o%2fsecret/y", 400, "encoded / or %"),
    ("GET", "/repos//o/secret", 400, "empty path segment"),
]


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
@pytest.mark.parametrize("method,path,status,names", REFUSED)
def test_refused_requests_name_the_rule_and_reach_nothing(psidecar, upstream, http, method,
                                                          path, status, names):
    m = upstream.mark()
    code, _, body, _ = call(psidecar, method, path, http)
    assert code == status, body
    assert names in body, body
    time.sleep(0.2)
    assert upstream.since(m) == [], "a refused request reached the upstream"


def test_refusals_are_counted_and_logged(psidecar):
    call(psidecar, "DELETE", "/repos/o/secret/x")
    call(psidecar, "DELETE", "/repos/o/r")
    code, _, body, _ = psidecar.curl("/metrics", host="localhost")
    assert code == 200
    for rule in (DENY, "no_allow_rule"):
        pattern = (r'^proxypilot_policy_refused_total\{route="api.github.com",rule="'
                   + re.escape(rule) + r'"\} (\d+)')
        m = re.search(pattern, body, re.M)
        assert m and int(m.group(1)) >= 1, (rule, body[-3000:])
    log = psidecar.proc.output()
    assert "DELETE api.github.com/repos/o/secret/x" in log and "deny rule" in log, log[-2000:]


def test_other_routes_are_not_limited(psidecar, upstream):
    m = upstream.mark()
    code, _, body, _ = call(psidecar, "DELETE", "/v1/files/x", host="api.openai.com")
    assert code == 200, body
    assert upstream.wait_since(m)[0]["method"] == "DELETE"


@pytest.mark.parametrize("rule,problem", [
    ('allow: ["GET repos/**"]', "must start with /"),
    ('allow: ["FETCH"]', "want"),
    ('deny: ["GET /a/../b"]', ". or .. segments"),
    ('allow: ["POST /graphql queries"]', "not a GraphQL operation type"),
])
def test_a_bad_rule_is_a_config_error_naming_the_key(bin_path, workdir, tokenizer, rule,
                                                     problem):
    from stack import sealed_env, sidecar_yaml
    d = workdir / "policy-bad"
    d.mkdir(exist_ok=True)
    text = sidecar_yaml(1, d / "ca", tokenizer.url).replace(
        "      secret_env: PP_SEALED_GITHUB\n",
        f"      secret_env: PP_SEALED_GITHUB\n      {rule}\n")
    conf = d / "proxy.yaml"
    conf.write_text(text)
    r = run([bin_path, "serve", "-t", "-c", str(conf)], env=sealed_env(tokenizer), check=False)
    assert r.returncode != 0
    key = "proxypilot.routes[0]." + rule.split(":")[0] + "[0]"
    assert str(conf) in r.stderr and key in r.stderr and problem in r.stderr, r.stderr


# ---- rules sealed inside the secret, enforced by our tokenizer (a shell that reads the sealed
# blob, e.g. through Fly's API, and calls the tokenizer itself never meets the sidecar's rules)

SEALED_RULES = ["--allow", "GET,HEAD /repos/**", "--deny", "* /repos/*/secret/**"]
SEALED_TOKEN = "ghp_SEALEDwithRULES0123456789"


def direct(tok, method, path, sealed):
    c = http.client.HTTPConnection("127.0.0.1", tok.port, timeout=20)
    c.request(method, f"http://api.github.com{path}", headers={"Proxy-Tokenizer": sealed})
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return r.status, body


@pytest.fixture(scope="module")
def ruled(tokenizer):
    return tokenizer.seal(SEALED_TOKEN, "--host", "api.github.com", *SEALED_RULES)


@pytest.mark.parametrize("method,path,status,names", [
    ("GET", "/repos/o/r", 200, ""),
    ("HEAD", "/repos/o/r/issues", 200, ""),
    ("DELETE", "/repos/o/r", 403, "sealed rules: forbidden by the route's policy: no allow rule"),
    ("GET", "/user", 403, "no allow rule matches GET"),
    ("GET", "/repos/o/secret/x", 403, 'deny rule "* /repos/*/secret/**"'),
    ("GET", "/REPOS/O/SECRET", 403, 'deny rule "* /repos/*/secret/**"'),
    ("GET", "/repos/o/x/%2e%2e/secret", 400, "dot segment"),
])
def test_rules_sealed_in_the_secret_hold_without_the_sidecar(tokenizer, upstream, ruled, method,
                                                             path, status, names):
    m = upstream.mark()
    got, body = direct(tokenizer, method, path, ruled)
    assert got == status, body
    if status == 200:
        e = upstream.wait_since(m)[0]
        assert headers_of(e)["authorization"] == [f"Bearer {SEALED_TOKEN}"]
    else:
        assert names in body, body
        time.sleep(0.2)
        assert upstream.since(m) == [], "a refused request reached the upstream"


def test_sealed_rules_also_hold_behind_the_sidecar(bin_path, workdir, tokenizer, upstream, ruled):
    s = start_sidecar(bin_path, workdir, tokenizer, name="sidecar-sealed-rules",
                      env_extra={"PP_SEALED_GITHUB": ruled})
    try:
        m = upstream.mark()
        code, _, body, _ = call(s, "GET", "/repos/o/r")
        assert code == 200, body
        assert headers_of(upstream.wait_since(m)[0])["authorization"] == [f"Bearer {SEALED_TOKEN}"]
        m = upstream.mark()
        code, _, body, _ = call(s, "DELETE", "/repos/o/r", http="--http2")
        assert code == 403 and "sealed rules" in body, body
        time.sleep(0.2)
        assert upstream.since(m) == []
    finally:
        s.proc.stop()


def test_seal_says_such_a_secret_needs_our_tokenizer(tokenizer):
    r = run([tokenizer.bin, "seal", "--host", "api.github.com", *SEALED_RULES],
            input=SEALED_TOKEN, env={"SEAL_KEY": tokenizer.seal_key})
    assert "only proxypilot's tokenizer enforces" in r.stderr, r.stderr
    # What is sealed: the rules ride with the processor under a key the reference tokenizer does
    # not know, so it finds no processor and refuses the secret instead of ignoring the rules.
    out = run([tokenizer.bin, "unseal", r.stdout.strip()],
              env={"OPEN_KEY": tokenizer.open_key}).stdout
    secret = json.loads(out)
    assert "inject_processor" not in secret, secret
    p = secret["proxypilot_inject_processor"]
    assert p["allow"] == ["GET,HEAD /repos/**"] and p["deny"] == ["* /repos/*/secret/**"]
    assert SEALED_TOKEN not in out
    for rule, problem in (("GET repos", "must start with /"),
                          ("POST /graphql query", "judged by a route's rules in the sidecar")):
        bad = run([tokenizer.bin, "seal", "--host", "api.github.com", "--allow", rule],
                  input=SEALED_TOKEN, env={"SEAL_KEY": tokenizer.seal_key}, check=False)
        assert bad.returncode != 0 and "allow[0]" in bad.stderr and problem in bad.stderr
