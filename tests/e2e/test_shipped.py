"""What ships in the repository works: the example configs and `make run`."""

import os
import re
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


PROFILE_MAGIC = bytes.fromhex("ff6c70726f666981")  # LLVM's indexed profile, little-endian


def pgo_flags(env=None):
    return run([str(ROOT / "scripts" / "pgo-flags.sh")], env=env, cwd=ROOT)


def test_the_release_build_uses_the_shipped_profile():
    """`make build`, `make lint` and both cargo builds of the Dockerfile pass the flag that
    scripts/pgo-flags.sh prints: -Cprofile-use with pgo/'s profile, unpacked and readable."""
    r = pgo_flags({"PROXYPILOT_PGO": "1"})
    out = ROOT / "target" / "pgo" / "proxypilot.profdata"
    assert r.stdout.strip() == f"-Cprofile-use={out}"
    assert out.read_bytes()[:8] == PROFILE_MAGIC
    made = (ROOT / "pgo" / "made-with.txt").read_text()
    assert re.search(r"^llvm-profdata: .*LLVM version \d+", made, re.M), made
    makefile = (ROOT / "Makefile").read_text()
    for recipe in ("cargo build --release", "cargo clippy --release"):
        assert re.search(rf"^\t\$\(PGO_RUSTFLAGS\) {re.escape(recipe)}", makefile, re.M), recipe
    dockerfile = (ROOT / "Dockerfile").read_text()
    builds = re.findall(r"(\S*) cargo build --release", dockerfile)
    assert builds == ['RUSTFLAGS="$(scripts/pgo-flags.sh)"'] * 2, builds
    allowed = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!pgo/" in allowed and "!scripts/pgo-flags.sh" in allowed


def test_the_profile_is_left_out_when_asked_or_unreadable(tmp_path):
    assert pgo_flags({"PROXYPILOT_PGO": "0"}).stdout == ""
    # A rustc whose LLVM is older than the llvm-profdata that wrote the profile
    fake = tmp_path / "rustc"
    fake.write_text("#!/bin/sh\necho 'rustc 1.80.0'\necho 'LLVM version: 18.1.7'\n")
    fake.chmod(0o755)
    r = pgo_flags({"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert r.stdout == "" and "building without the profile" in r.stderr
