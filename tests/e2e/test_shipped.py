"""What ships in the repository works: the example configs and `make run`."""

import os
import re
import shutil
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
    """`make build`, `make lint` and both cargo builds of the Dockerfile pass the flags that
    scripts/pgo-flags.sh prints: -Cprofile-use with pgo/'s profile, unpacked and readable."""
    r = pgo_flags({"PROXYPILOT_PGO": "1"})
    out = ROOT / "target" / "pgo" / "proxypilot.profdata"
    # and the link keeps its relocations, which scripts/bolt.sh needs to move code
    assert r.stdout.strip() == f"-Cprofile-use={out} -Clink-arg=-Wl,--emit-relocs"
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


def bolt(binary, env=None):
    return run([str(ROOT / "scripts" / "bolt.sh"), str(binary)], env=env, cwd=ROOT)


def sections(binary):
    return run(["readelf", "-SW", str(binary)]).stdout


def test_the_release_build_is_laid_out_by_bolt():
    """`make build` (the binary every test runs) and the Dockerfile's build stage run
    scripts/bolt.sh after cargo: llvm-bolt rewrote the binary with pgo/'s BOLT profile, and
    that profile still names most of the binary's hot functions."""
    if os.environ.get("PROXYPILOT_PGO") == "0" or os.environ.get("PROXYPILOT_BOLT") == "0":
        pytest.skip("built without the profiles, as asked")
    built = ROOT / "target" / "release" / "proxypilot"
    assert ".note.bolt_info" in sections(built), "make build did not run scripts/bolt.sh"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\t\$\(PGO_RUSTFLAGS\) cargo build --release --locked\n"
                     r"\tscripts/bolt\.sh \$\(BIN\)$", makefile, re.M)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"cargo build --release --locked \\\n"
                     r" && scripts/bolt\.sh target/release/proxypilot \\\n"
                     r" && strip target/release/proxypilot", dockerfile), "Dockerfile"
    assert "bolt-19" in dockerfile
    assert "!scripts/bolt.sh" in (ROOT / ".dockerignore").read_text().splitlines()
    made = (ROOT / "pgo" / "made-with.txt").read_text()
    assert re.search(r"^llvm-bolt: .*LLVM version \d+", made, re.M), made
    # How much of the profile applied, from llvm-bolt's own count when it laid out the binary.
    # Few functions matched means the profile is stale (a new rustc renames every function):
    # `scripts/pgo.sh --bolt-only` makes it again.
    log = (ROOT / "target" / "release" / "proxypilot.bolt.log").read_text()
    applied = int(re.search(r"(\d+) out of \d+ functions in the binary .* have non-empty "
                            r"execution profile", log).group(1))
    named = (ROOT / "target" / "pgo" / "proxypilot.bolt.yaml").read_text().count("\n  - name:")
    assert applied >= named // 2, f"the BOLT profile matched {applied} of its {named} functions"


def test_bolt_leaves_the_binary_alone_when_asked_or_unable(tmp_path):
    """scripts/bolt.sh never breaks the build: when it is told not to, cannot, or fails, the
    binary stays as cargo linked it (and it says why unless told not to). A binary it already
    laid out is left as it is."""
    if not shutil.which("cc"):
        skip_unless_ci("no C compiler")
    src = tmp_path / "t.c"
    src.write_text("int main(void) { return 0; }\n")
    relocs = tmp_path / "relocs"
    run(["cc", "-O1", "-o", str(relocs), str(src), "-Wl,--emit-relocs"])
    plain = tmp_path / "plain"
    run(["cc", "-O1", "-o", str(plain), str(src)])
    failing = tmp_path / "llvm-bolt"
    failing.write_text("#!/bin/sh\necho 'BOLT-ERROR: something it cannot do' >&2\nexit 1\n")
    failing.chmod(0o755)
    cases = [
        (relocs, {"PROXYPILOT_BOLT": "0"}, None),
        (relocs, {"PROXYPILOT_PGO": "0"}, None),
        (relocs, {"LLVM_BOLT": str(tmp_path / "none")}, "no llvm-bolt"),
        (plain, {}, "it has no relocations"),
        (relocs, {"LLVM_BOLT": str(failing)}, "llvm-bolt failed"),
    ]
    for binary, env, why in cases:
        before = binary.read_bytes()
        r = bolt(binary, env)
        assert binary.read_bytes() == before, env
        if why is None:
            assert r.stdout == r.stderr == "", env
        else:
            assert f"bolt: {why}" in r.stderr and "not laid out by BOLT" in r.stderr, r.stderr
    # Laid out once, left alone after: a second run does not touch it.
    if ".note.bolt_info" not in sections(ROOT / "target" / "release" / "proxypilot"):
        skip_unless_ci("the release binary is not laid out by BOLT")
    again = tmp_path / "proxypilot"
    shutil.copy(ROOT / "target" / "release" / "proxypilot", again)
    before = again.read_bytes()
    r = bolt(again)
    assert again.read_bytes() == before and r.stderr == "", r.stderr
