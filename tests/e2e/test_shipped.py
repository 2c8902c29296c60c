"""What ships in the repository works: the example configs and `make run`."""

import os
import signal
import socket
import subprocess
import time

import pytest

from stack import ROOT, run, skip_unless_ci


def port_busy(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("conf,envs", [
    ("conf/proxy.yaml", ["GH_TOKEN", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"]),
    ("conf/local.yaml", ["PP_SEALED_GITHUB", "PP_SEALED_ANTHROPIC", "PP_SEALED_OPENAI"]),
    ("conf/github-readonly.yaml", ["GH_TOKEN", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"]),
])
def test_example_configs_validate(bin_path, tokenizer, conf, envs):
    env = {e: tokenizer.seal("t", "--host", "x.example") for e in envs}
    r = run([bin_path, "serve", "-t", "-c", conf], env=env, cwd=ROOT)
    assert "configuration OK" in r.stdout
    # and each missing variable is named
    r = run([bin_path, "serve", "-t", "-c", conf], env={**env, envs[1]: ""}, cwd=ROOT, check=False)
    assert r.returncode != 0 and envs[1] in r.stderr


def test_make_run_prints_a_working_command_and_stops_on_ctrl_c():
    if port_busy(8080) or port_busy(8443):
        skip_unless_ci("make run's ports (8080, 8443) are in use")
    # Pin api.github.com to a closed loopback port: the test never leaves the machine.
    env = dict(os.environ, PP_TOKENIZER_ARGS="--connect-to api.github.com:443:127.0.0.1:9")
    env.pop("OPEN_KEY", None)
    p = subprocess.Popen(["scripts/run.sh"], cwd=ROOT, stdout=subprocess.PIPE, env=env,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            out.append(line)
            if "Ctrl-C stops both" in line:
                break
        text = "".join(out)
        assert "curl --resolve api.github.com:8443:127.0.0.1" in text, text
        r = run(["curl", "-sS", "--resolve", "api.github.com:8443:127.0.0.1", "--cacert",
                 str(ROOT / "run/ca/ca.pem"), "-H", "Authorization: Bearer dummy",
                 "-w", "\n%{http_code}", "https://api.github.com:8443/user"], check=False)
        # The tokenizer's 502 with its reason: the path sidecar -> tokenizer -> upstream works.
        body, _, code = r.stdout.rpartition("\n")
        assert code == "502", r.stdout + r.stderr
        assert "upstream api.github.com:443: connection refused" in body, body
    finally:
        os.killpg(p.pid, signal.SIGINT)
        rest, _ = p.communicate(timeout=20)
    assert "make run: stopped" in rest
    assert not port_busy(8443) and not port_busy(8080)
