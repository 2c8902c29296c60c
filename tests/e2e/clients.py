"""Running real clients (curl, Python, Node, git, gh) as the shell would, for
test_clients.py (TLS listener, names from a hosts file) and test_connect_clients.py (the proxy
listener): in a private mount namespace with a hosts file of the test's choosing, an empty HOME
and an environment scrubbed of anything that would send a client elsewhere, give it other
credentials or other trust; and checking what the echo upstream got."""

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap

from stack import DUMMY, REAL, headers_of, skip_unless_ci, under_hosts

# Inherited variables that would send a client elsewhere, give it other credentials or other trust.
SCRUB_PREFIXES = ("ANTHROPIC_", "OPENAI_", "GH_", "GITHUB_", "GIT_", "CURL_", "NODE_")
NO_PROXY = "localhost,127.0.0.1,::1"
SCRUB = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ssl_cert_file", "ssl_cert_dir",
         "requests_ca_bundle"}


def require(tool):
    """A client the tests need: scripts/setup.sh installs it, so in CI its absence is a failure."""
    if shutil.which(tool):
        return
    skip_unless_ci(f"{tool} is not installed (scripts/setup.sh installs it)")


def run_client(hosts, home, args, env=None, timeout=90, check=True):
    full = {k: v for k, v in os.environ.items()
            if k.lower() not in SCRUB and not k.upper().startswith(SCRUB_PREFIXES)}
    # Python still finds packages a `pip install --user` put under the real HOME.
    full.setdefault("PYTHONUSERBASE", site.getuserbase())
    # Loopback never goes through a proxy (the tests that set HTTPS_PROXY rely on it).
    full.update(HOME=str(home), NO_COLOR="1", NO_PROXY=NO_PROXY, no_proxy=NO_PROXY,
                **(env or {}))
    r = subprocess.run(under_hosts(hosts, args), capture_output=True, text=True, env=full,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, f"{args[0]} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def python_client(hosts, home, script, *args, env=None):
    r = run_client(hosts, home, [sys.executable, "-c", textwrap.dedent(script), *args], env=env)
    return json.loads(r.stdout.strip().splitlines()[-1])


def assert_real_only(entry, host, header="authorization", fmt="Bearer {}"):
    """The upstream got the route's real credential, in one header, and nothing of the dummy."""
    h = headers_of(entry)
    assert h.get(header) == [fmt.format(REAL[host])], h
    for other in ("authorization", "x-api-key"):
        if other != header:
            assert other not in h, h
    assert "proxy-tokenizer" not in h and "proxy-authorization" not in h, h
    assert h["host"] == [host], h
    assert DUMMY not in json.dumps(entry["headers"]).lower()
    assert DUMMY not in entry["body_head"].lower()


def sent_json(entry):
    return json.loads(entry["body_head"])
