"""The sealing tools of the CLI: seal, unseal, sealkey, keygen."""

import json
import os

from stack import keygen, run


def seal(bin_path, seal_key, *args, input=None, env=None):
    return run([bin_path, "seal", *args], input=input,
               env={"SEAL_KEY": seal_key, **(env or {})}, check=False)


def unseal(bin_path, open_key, sealed, *args):
    return run([bin_path, "unseal", *args], input=sealed, env={"OPEN_KEY": open_key}, check=False)


def test_seal_unseal_round_trip_and_redaction(bin_path):
    open_key, seal_key = keygen(bin_path)
    r = seal(bin_path, seal_key, "--host", "api.github.com", "--org", "personal", "--app",
             "proxypilot", "--instance", "148e21ea7e1e89", input="ghp_secret_token\n")
    assert r.returncode == 0, r.stderr
    sealed = r.stdout.strip()
    assert "ghp_secret_token" not in r.stdout + r.stderr
    shown = unseal(bin_path, open_key, sealed, "--show-secret")
    assert shown.returncode == 0, shown.stderr
    secret = json.loads(shown.stdout)
    assert secret["inject_processor"]["token"] == "ghp_secret_token"
    assert secret["allowed_hosts"] == ["api.github.com"]
    assert secret["fly_src_auth"] == {"allowed_orgs": ["personal"], "allowed_apps": ["proxypilot"],
                                      "allowed_instances": ["148e21ea7e1e89"]}
    red = unseal(bin_path, open_key, sealed)
    assert red.returncode == 0
    assert "ghp_secret_token" not in red.stdout and "<redacted>" in red.stdout


def test_only_the_matching_key_opens(bin_path):
    open_a, seal_a = keygen(bin_path)
    open_b, _ = keygen(bin_path)
    sealed = seal(bin_path, seal_a, "--host", "x.example", input="tok").stdout.strip()
    assert unseal(bin_path, open_a, sealed).returncode == 0
    bad = unseal(bin_path, open_b, sealed)
    assert bad.returncode != 0 and "decryption" in bad.stderr


def test_sealkey_matches_keygen(bin_path):
    open_key, seal_key = keygen(bin_path)
    r = run([bin_path, "sealkey"], env={"OPEN_KEY": open_key})
    assert r.stdout.strip() == seal_key


def test_header_flag_matches_the_reference_shape(bin_path, tmp_path):
    open_key, seal_key = keygen(bin_path)
    os.environ["PP_TEST_TOKEN"] = "sk-ant-real"
    r = seal(bin_path, seal_key, "--host", "api.anthropic.com", "--header", "x-api-key",
             "--token-env", "PP_TEST_TOKEN")
    assert r.returncode == 0, r.stderr
    s = json.loads(unseal(bin_path, open_key, r.stdout.strip(), "--show-secret").stdout)
    # Same keys and values as the vectors file's inject_dst_fmt case.
    assert s == {"inject_processor": {"token": "sk-ant-real", "dst": "x-api-key", "fmt": "%s"},
                 "no_auth": {}, "allowed_hosts": ["api.anthropic.com"]}


def test_json_modes_and_refusals(bin_path, tmp_path):
    open_key, seal_key = keygen(bin_path)
    secret = {"inject_processor": {"token": "t"}, "no_auth": {}, "future_key": 1}
    f = tmp_path / "s.json"
    f.write_text(json.dumps(secret))
    r = seal(bin_path, seal_key, "--json-file", str(f))
    assert r.returncode == 0, r.stderr
    # sealed verbatim: unknown keys survive for newer tokenizers
    assert json.loads(unseal(bin_path, open_key, r.stdout.strip(), "--show-secret").stdout) == secret
    r = seal(bin_path, seal_key, "--json", json.dumps(secret))
    assert r.returncode == 0, r.stderr
    two = {"inject_processor": {"token": "t"}, "no_auth": {}, "bearer_auth": {"digest": "AAAA"}}
    r = seal(bin_path, seal_key, "--json", json.dumps(two))
    assert r.returncode != 0 and "exactly one auth" in r.stderr
    r = seal(bin_path, seal_key, "--json", "{not json")
    assert r.returncode != 0
    r = seal(bin_path, seal_key, "--host", "h", "--fmt", "%d", input="t")
    assert r.returncode != 0 and "--fmt" in r.stderr
    r = run([bin_path, "seal", "--host", "h"], input="t", check=False, env={"SEAL_KEY": ""})
    assert r.returncode != 0


def test_bearer_password_seals_a_digest(bin_path):
    open_key, seal_key = keygen(bin_path)
    r = seal(bin_path, seal_key, "--host", "h", "--auth-password-env", "PP_PW", input="t",
             env={"PP_PW": "trustno1"})
    assert r.returncode == 0, r.stderr
    s = json.loads(unseal(bin_path, open_key, r.stdout.strip(), "--show-secret").stdout)
    # sha256("trustno1"), the vectors file's bearer_digest_b64
    assert s["bearer_auth"]["digest"] == "IDtwta6IOTIWG70L3tk1fnY+Y6/OmLFiML4z8LlMLMU="


def test_keygen_out_file_is_private(bin_path, tmp_path):
    out = tmp_path / "tokenizer.env"
    r = run([bin_path, "keygen", "--out", str(out)])
    assert r.stdout.startswith("SEAL_KEY=") and "OPEN_KEY" not in r.stdout
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    open_key = out.read_text().strip().split("=", 1)[1]
    assert run([bin_path, "sealkey"], env={"OPEN_KEY": open_key}).stdout.strip() == \
        r.stdout.strip().split("=", 1)[1]
