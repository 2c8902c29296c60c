"""The deployment files, checked offline (nothing here reaches Fly or a cluster):

- deploy/fly: machine.json against a JSON schema transcribed from the Go structs flyctl decodes
  it into (deploy/fly/machine-config.schema.json: flyctl drops unknown keys without a word),
  fly.toml and tokenizer.toml against one transcribed from flyctl's appconfig
  (deploy/fly/fly-toml.schema.json), then the properties that keep the secrets in the sidecar;
- deploy/k8s: every manifest against the Kubernetes API's own schemas (kubernetes-validate,
  strict: unknown fields fail), then the same properties plus the Pod's hardening;
- examples/shell: the entry point runs the trust bootstrap before the command;
- scripts/fly-deploy.sh: --dry-run prints every command in order and runs none; the real run
  (with a fake flyctl) seals for the org and app and feeds the sealed values to flyctl's stdin;
  it refuses to start without SEAL_KEY, flyctl or a target the sidecar routes.

Each property is one `check_*` function over the parsed files. `test_property` runs it on the
files as they are; `test_property_check_catches_breakage` breaks that one property in a copy
and asserts that the check then fails, so no check passes vacuously.
"""

import copy
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stack import ROOT, run, skip_unless_ci
import harness  # noqa: E402  (tests/harness.py, on sys.path through stack)

FLY = ROOT / "deploy" / "fly"
K8S = ROOT / "deploy" / "k8s"
EXAMPLES = ROOT / "examples" / "shell"
DEPLOY_SCRIPT = ROOT / "scripts" / "fly-deploy.sh"
WRAPPER = "/usr/local/bin/proxypilot-shell-entrypoint"
PROXYPILOT = "/usr/local/bin/proxypilot"
# Native sidecars (restartPolicy: Always on an init container) are on by default from 1.29;
# 1.30 is the oldest version checked, 1.37 the newest kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")
K8S_MANIFESTS = ("agent.yaml", "tokenizer.yaml", "secret.example.yaml")
# What a sealed secret (standard base64 of a sealed box: 48 bytes and more, so 64 characters
# and more) or a real API token looks like.
SEALED_LIKE = re.compile(r"(?=.*[A-Z])(?=.*[a-z])(?=.*[0-9])[A-Za-z0-9+/]{62,}={0,2}")
TOKEN_LIKE = re.compile(r"(ghp_|gho_|ghu_|ghs_|ghr_|github_pat_|sk-ant-|sk-proj-|sk-[A-Za-z0-9]{16}"
                        r"|xox[abpr]-|AKIA[0-9A-Z]{12})")
GO_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
# The shape of `proxypilot seal` output (a sealed secret for a throwaway key).
SEALED_EXAMPLE = ("LtswHz5wAcHQSOWPGe/JqXyQlbXNKl6BiOV1wE/zoi9hm+AshsVpVfdVCP/sLK6Nh42Zw"
                  "qsh79KjclCuio/6B86siuY0CCfQcYSUwsj9lE8qST5ZwQ=")


# ---- the files, parsed ---------------------------------------------------------------------

def load_all():
    k8s = {f: [d for d in yaml.safe_load_all((K8S / f).read_text()) if d] for f in K8S_MANIFESTS}
    return {
        "machine": json.loads((FLY / "machine.json").read_text()),
        "fly": tomllib.loads((FLY / "fly.toml").read_text()),
        "tokenizer": tomllib.loads((FLY / "tokenizer.toml").read_text()),
        "k8s": k8s,
        "kustomization": yaml.safe_load((K8S / "kustomization.yaml").read_text()),
        "shell_dockerfile": (EXAMPLES / "Dockerfile").read_text(),
        "shell_dockerignore": (EXAMPLES / "Dockerfile.dockerignore").read_text(),
        # any other Fly app config where one would look for it (the old root fly.toml was one)
        "other_fly_configs": [
            cfg for f in sorted({*ROOT.glob("*.toml"), *ROOT.glob("deploy/**/*.toml"),
                                 *ROOT.glob("examples/**/*.toml")})
            if f not in (FLY / "fly.toml", FLY / "tokenizer.toml")
            and "app" in (cfg := tomllib.loads(f.read_text()))],
    }


FILES = load_all()


def fly_containers(ctx):
    return {c.get("name"): c for c in ctx["machine"].get("containers", [])}


def parse_targets(value):
    """tlsproxy's TARGETS: host=ENV_VAR,... -> {host: var}, refusing anything malformed."""
    out = {}
    for item in value.split(","):
        m = re.fullmatch(r"([a-z0-9]([a-z0-9.-]*[a-z0-9])?)=([A-Za-z_][A-Za-z0-9_]*)", item)
        assert m, f"TARGETS item {item!r} is not host=ENV_VAR"
        assert m[1] not in out, f"TARGETS routes {m[1]} twice"
        out[m[1]] = m[3]
    return out


def fly_targets(ctx):
    return parse_targets(fly_containers(ctx)["sidecar"]["env"]["TARGETS"])


def k8s_doc(ctx, kind, name):
    for docs in ctx["k8s"].values():
        for d in docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                return d
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def agent_pod(ctx):
    return k8s_doc(ctx, "Deployment", "proxypilot-agent")["spec"]["template"]["spec"]


def tokenizer_pod(ctx):
    return k8s_doc(ctx, "Deployment", "proxypilot-tokenizer")["spec"]["template"]["spec"]


def pod_containers(pod):
    return {c["name"]: c for c in pod.get("initContainers", []) + pod.get("containers", [])}


def env_map(container):
    return {e["name"]: e for e in container.get("env", [])}


def k8s_targets(ctx):
    return parse_targets(env_map(pod_containers(agent_pod(ctx))["sidecar"])["TARGETS"]["value"])


def strings(node, path="$"):
    """Every string in a parsed document (keys too), with where it is."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", str(k)
            yield from strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def schema_errors(schema_file, doc):
    schema = json.loads((FLY / schema_file).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in v.iter_errors(doc)]


def is_proxypilot_command(cmd, sub):
    return len(cmd) >= 2 and Path(cmd[0]).name == "proxypilot" and cmd[1] == sub


# ---- Fly: the Machine ------------------------------------------------------------------------

def check_machine_json_matches_the_fly_schema(ctx):
    errors = schema_errors("machine-config.schema.json", ctx["machine"])
    assert not errors, "machine.json: flyctl would drop or refuse these:\n" + "\n".join(errors)


def check_fly_tomls_match_the_flyctl_schema(ctx):
    for name in ("fly", "tokenizer"):
        errors = schema_errors("fly-toml.schema.json", ctx[name])
        assert not errors, f"{name}.toml: flyctl would drop or refuse these:\n" + "\n".join(errors)


def check_fly_toml_selects_the_sidecar_at_top_level(ctx):
    cfg = ctx["fly"]
    assert "container" not in cfg.get("experimental", {}), \
        "[experimental] container is ignored by flyctl: `container` must be top level"
    assert cfg.get("container") == "sidecar", cfg.get("container")


def check_fly_toml_names_machine_json_beside_it(ctx):
    mc = ctx["fly"].get("machine_config")
    assert mc == "machine.json", mc
    assert (FLY / mc).is_file(), f"deploy/fly/{mc} is missing"


def check_fly_app_has_no_public_services(ctx):
    cfg = ctx["fly"]
    assert not cfg.get("services") and not cfg.get("http_service"), \
        "the agent's Machine must not be reachable from outside"


def check_containers_are_sidecar_and_shell(ctx):
    names = [c.get("name") for c in ctx["machine"]["containers"]]
    assert sorted(names) == ["shell", "sidecar"], names


def check_shell_waits_for_a_healthy_sidecar(ctx):
    deps = fly_containers(ctx)["shell"].get("depends_on", [])
    assert {"name": "sidecar", "condition": "healthy"} in deps, deps


def check_sidecar_health_check_runs_proxypilot_health(ctx):
    checks = fly_containers(ctx)["sidecar"].get("healthchecks", [])
    assert any(is_proxypilot_command(c.get("exec", {}).get("command", []), "health")
               for c in checks), checks


def check_only_the_sidecar_lists_secrets(ctx):
    for name, c in fly_containers(ctx).items():
        if name == "sidecar":
            continue
        assert not c.get("secrets"), f"container {name} lists secrets: {c['secrets']}"
        assert not any("secret_name" in f for f in c.get("files", [])), \
            f"container {name} gets a secret as a file"
    assert not any("secret_name" in f for f in ctx["machine"].get("files", []))


def check_sidecar_secrets_are_its_targets(ctx):
    secrets = {s["env_var"] for s in fly_containers(ctx)["sidecar"].get("secrets", [])}
    assert secrets == set(fly_targets(ctx).values()), (secrets, fly_targets(ctx))


def check_shell_has_a_dummy_for_every_target(ctx):
    env = fly_containers(ctx)["shell"].get("env", {})
    for host, var in fly_targets(ctx).items():
        assert env.get(var) == "dummy", f"shell: {var} (for {host}) is {env.get(var)!r}"


def check_sidecar_is_a_tlsproxy_dropin_for_our_tokenizer(ctx):
    env = fly_containers(ctx)["sidecar"].get("env", {})
    assert fly_targets(ctx)
    assert env.get("PORT") == "443", env.get("PORT")
    assert env.get("PROXY") == f"http://{ctx['tokenizer']['app']}.flycast", env.get("PROXY")


def check_shell_runs_the_trust_bootstrap_at_start(ctx):
    shell = fly_containers(ctx)["shell"]
    assert shell.get("entrypoint") == [WRAPPER], shell.get("entrypoint")


def check_shell_image_carries_the_bootstrap(ctx):
    d = ctx["shell_dockerfile"]
    assert re.search(r"^COPY deploy/shell/proxypilot-trust /usr/local/bin/proxypilot-trust$",
                     d, re.M)
    assert re.search(rf"^COPY examples/shell/proxypilot-shell-entrypoint {WRAPPER}$", d, re.M)
    assert re.search(rf'^ENTRYPOINT \["{WRAPPER}"\]$', d, re.M)


def check_shell_build_context_lets_in_what_it_copies(ctx):
    """The build context is the repository root, whose .dockerignore is an allowlist for the
    sidecar: examples/shell/Dockerfile.dockerignore must let in every COPY source."""
    rules = [l.strip() for l in ctx["shell_dockerignore"].splitlines()
             if l.strip() and not l.startswith("#")]
    assert rules[0] == "*", rules
    allowed = [r[1:] for r in rules[1:] if r.startswith("!")]
    for line in ctx["shell_dockerfile"].splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert any(src == a or (a.endswith("/") and src.startswith(a)) for a in allowed), \
                    f"{src} is not in examples/shell/Dockerfile.dockerignore"


def check_no_value_looks_like_a_secret(ctx):
    docs = {"machine.json": ctx["machine"], "fly.toml": ctx["fly"],
            "tokenizer.toml": ctx["tokenizer"], **ctx["k8s"]}
    for name, doc in docs.items():
        for where, s in strings(doc):
            for part in re.split(r"[\s,=\"'<>]+", s):
                assert not SEALED_LIKE.fullmatch(part), f"{name} {where}: looks sealed"
                assert not TOKEN_LIKE.search(part), f"{name} {where}: looks like a real token"


# ---- Fly: the tokenizer ----------------------------------------------------------------------

def check_tokenizer_is_reachable_over_flycast_only(ctx):
    tok = ctx["tokenizer"]
    assert not tok.get("http_service"), "[http_service] is a public web service"
    services = tok.get("services", [])
    assert services, "no [[services]]: flycast would have nothing to reach"
    for s in services:
        for p in s.get("ports", []):
            assert p.get("handlers") == ["http"], \
                f"port {p.get('port')}: only the http handler (Fly-Src needs it; no tls)"
            assert p.get("port") != 443 and not p.get("force_https"), p


def check_tokenizer_requires_fly_src(ctx):
    env = ctx["tokenizer"].get("env", {})
    for k in ("REQUIRE_FLYSRC", "USE_FLYSRC"):
        assert env.get(k) in GO_TRUE, f"{k}={env.get(k)!r}"


def check_tokenizer_open_key_is_not_in_the_config(ctx):
    for where, s in strings(ctx["tokenizer"]):
        assert "OPEN_KEY" not in s, f"tokenizer.toml {where}: OPEN_KEY belongs in `fly secrets`"


def check_tokenizer_runs_proxypilot_tokenizer(ctx):
    procs = ctx["tokenizer"].get("processes", {})
    assert procs and all(v.split()[0] == "tokenizer" for v in procs.values()), procs
    for s in ctx["tokenizer"].get("services", []):
        assert set(s.get("processes", procs)) <= set(procs), s.get("processes")


def check_each_fly_app_has_one_config(ctx):
    apps = [ctx["fly"].get("app"), ctx["tokenizer"].get("app")] + \
        [c.get("app") for c in ctx["other_fly_configs"]]
    assert len(apps) == len(set(apps)), f"two configs for one app: {apps}"


# ---- Kubernetes ------------------------------------------------------------------------------

def check_k8s_manifests_validate(ctx):
    for f, docs in ctx["k8s"].items():
        for d in docs:
            for v in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(d, v, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(map(str, e.path))
                    raise AssertionError(f"{f} {d['kind']} (Kubernetes {v}): {path}: {e.message}")


def check_kustomization_lists_the_manifests_but_not_the_secret_example(ctx):
    k = ctx["kustomization"]
    assert k.get("kind") == "Kustomization"
    res = k.get("resources", [])
    assert sorted(res) == ["agent.yaml", "tokenizer.yaml"], res
    assert all((K8S / r).is_file() for r in res)
    images = {i["name"] for i in k.get("images", [])}
    used = {c["image"] for p in (agent_pod(ctx), tokenizer_pod(ctx))
            for c in pod_containers(p).values()}
    assert used <= images, f"images without a kustomize entry: {used - images}"


def check_sidecar_is_a_native_sidecar(ctx):
    pod = agent_pod(ctx)
    inits = {c["name"]: c for c in pod.get("initContainers", [])}
    assert "sidecar" in inits and inits["sidecar"].get("restartPolicy") == "Always", inits.keys()
    assert "agent" in {c["name"] for c in pod.get("containers", [])}


def check_pod_lets_the_sidecar_bind_443(ctx):
    sysctls = {s["name"]: s["value"] for s in
               agent_pod(ctx).get("securityContext", {}).get("sysctls", [])}
    assert sysctls.get("net.ipv4.ip_unprivileged_port_start") == "0", sysctls


def effective(pod, container, key):
    sc = container.get("securityContext", {})
    return sc[key] if key in sc else pod.get("securityContext", {}).get(key)


def check_proxypilot_containers_run_as_non_root(ctx):
    for pod, name in ((agent_pod(ctx), "sidecar"), (tokenizer_pod(ctx), "tokenizer")):
        c = pod_containers(pod)[name]
        assert effective(pod, c, "runAsNonRoot") is True, name
        assert effective(pod, c, "runAsUser") not in (None, 0), name


def check_every_container_drops_all_capabilities(ctx):
    for pod in (agent_pod(ctx), tokenizer_pod(ctx)):
        for name, c in pod_containers(pod).items():
            sc = c.get("securityContext", {})
            caps = sc.get("capabilities", {})
            assert caps.get("drop") == ["ALL"], f"{name}: drop {caps.get('drop')}"
            # Only NET_BIND_SERVICE comes back, and only where the proxypilot binary runs: its
            # file capability cannot be exec'd outside the bounding set (see agent.yaml).
            allowed = {"NET_BIND_SERVICE"} if c["image"] == "proxypilot" else set()
            assert set(caps.get("add", [])) <= allowed, f"{name}: adds {caps.get('add')}"
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert not sc.get("privileged"), name


def check_proxypilot_containers_have_read_only_roots(ctx):
    for pod, name in ((agent_pod(ctx), "sidecar"), (tokenizer_pod(ctx), "tokenizer")):
        sc = pod_containers(pod)[name].get("securityContext", {})
        assert sc.get("readOnlyRootFilesystem") is True, name


def secret_uses(pod, c):
    out = [e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    out += ["envFrom" for e in c.get("envFrom", []) if "secretRef" in e]
    secret_volumes = {v["name"] for v in pod.get("volumes", [])
                      if "secret" in v or "projected" in v}
    out += [m["name"] for m in c.get("volumeMounts", []) if m["name"] in secret_volumes]
    return out


def check_only_the_sidecar_reads_secrets(ctx):
    pod = agent_pod(ctx)
    for name, c in pod_containers(pod).items():
        if name != "sidecar":
            assert not secret_uses(pod, c), f"{name} reads secrets: {secret_uses(pod, c)}"
    sidecar_secrets = set(secret_uses(pod, pod_containers(pod)["sidecar"]))
    assert set(k8s_targets(ctx).values()) <= sidecar_secrets, sidecar_secrets


def check_host_aliases_route_every_target_to_both_loopbacks(ctx):
    aliases = {a["ip"]: set(a.get("hostnames", [])) for a in agent_pod(ctx).get("hostAliases", [])}
    for ip in ("127.0.0.1", "::1"):
        missing = set(k8s_targets(ctx)) - aliases.get(ip, set())
        assert not missing, f"hostAliases {ip} lacks {sorted(missing)}"


def check_startup_probe_runs_proxypilot_health(ctx):
    probe = pod_containers(agent_pod(ctx))["sidecar"].get("startupProbe", {})
    assert is_proxypilot_command(probe.get("exec", {}).get("command", []), "health"), probe


def check_ca_key_stays_in_the_sidecar(ctx):
    pod = agent_pod(ctx)
    cs = pod_containers(pod)
    mine = {m["name"] for m in cs["sidecar"].get("volumeMounts", [])}
    for name, c in cs.items():
        if name != "sidecar":
            shared = mine & {m["name"] for m in c.get("volumeMounts", [])}
            assert not shared, f"{name} mounts the sidecar's volumes {shared}"
    wd = cs["sidecar"].get("workingDir")
    mounts = {m["mountPath"]: m["name"] for m in cs["sidecar"].get("volumeMounts", [])}
    assert wd in mounts, f"the sidecar's working directory {wd} (its CA) is not its own volume"
    vol = {v["name"]: v for v in pod.get("volumes", [])}[mounts[wd]]
    assert "emptyDir" in vol, vol


def check_agent_runs_the_trust_bootstrap_first(ctx):
    agent = pod_containers(agent_pod(ctx))["agent"]
    assert agent.get("command") == [WRAPPER], agent.get("command")


def check_agent_has_a_dummy_for_every_target(ctx):
    env = env_map(pod_containers(agent_pod(ctx))["agent"])
    for host, var in k8s_targets(ctx).items():
        assert env.get(var, {}).get("value") == "dummy", f"agent: {var} (for {host})"


def check_pod_gives_the_agent_no_way_around_the_sidecar(ctx):
    pod = agent_pod(ctx)
    assert pod.get("automountServiceAccountToken") is False, "the agent would get an API token"
    assert not pod.get("shareProcessNamespace"), "the agent could read the sidecar's environment"
    uids = {n: effective(pod, c, "runAsUser") for n, c in pod_containers(pod).items()}
    assert uids["agent"] != uids["sidecar"], uids


def check_sidecar_proxy_is_the_tokenizer_service(ctx):
    env = env_map(pod_containers(agent_pod(ctx))["sidecar"])
    url = urlsplit(env["PROXY"]["value"])
    svc = k8s_doc(ctx, "Service", "proxypilot-tokenizer")
    assert url.scheme == "http" and url.hostname == svc["metadata"]["name"], url
    assert url.port in {p["port"] for p in svc["spec"]["ports"]}, url
    # The password comes from the Secret, through a variable defined before PROXY.
    assert url.password == "$(TOKENIZER_PASSWORD)", "PROXY must not hold the password itself"
    names = list(env)
    assert names.index("TOKENIZER_PASSWORD") < names.index("PROXY")
    assert "secretKeyRef" in env["TOKENIZER_PASSWORD"].get("valueFrom", {})


def check_tokenizer_open_key_comes_from_a_secret(ctx):
    env = env_map(pod_containers(tokenizer_pod(ctx))["tokenizer"])
    assert "secretKeyRef" in env.get("OPEN_KEY", {}).get("valueFrom", {}), env.get("OPEN_KEY")


def check_fly_and_kubernetes_route_the_same_hosts(ctx):
    assert fly_targets(ctx) == k8s_targets(ctx), (fly_targets(ctx), k8s_targets(ctx))
    called = {"github.sh": "api.github.com", "anthropic_example.py": "api.anthropic.com",
              "openai_example.py": "api.openai.com"}
    for script, host in called.items():
        assert (EXAMPLES / script).is_file(), script
        assert host in fly_targets(ctx), f"{script} calls {host}, which the sidecar does not route"


# ---- the table: property, and how to break it ------------------------------------------------

class Prop:
    """A check, and ways to break its property in a copy of the parsed files."""

    def __init__(self, check: Callable, *breaks: Callable):
        self.check = check
        self.breaks = breaks


def _sc(ctx, n):
    return fly_containers(ctx)[n]


def _pc(ctx, n):
    return pod_containers(agent_pod(ctx))[n]


def _set_env(c, name, value):
    for e in c["env"]:
        if e["name"] == name:
            e.clear()
            e.update({"name": name, "value": value})


PROPS = [
    Prop(check_machine_json_matches_the_fly_schema,
         # the origin's tcp check had an `ip` that flyctl dropped
         lambda c: _sc(c, "sidecar")["healthchecks"].append(
             {"tcp": {"ip": "127.0.0.1", "port": 443}})),
    Prop(check_fly_tomls_match_the_flyctl_schema,
         lambda c: c["fly"]["vm"][0].update(memroy="256mb"),
         lambda c: c["tokenizer"]["services"][0]["ports"][0].update(handler=["http"]),
         lambda c: c["fly"].setdefault("experimental", {}).update(container="sidecar")),
    Prop(check_fly_toml_selects_the_sidecar_at_top_level,
         lambda c: c["fly"].setdefault("experimental", {}).update(
             container=c["fly"].pop("container"))),
    Prop(check_fly_toml_names_machine_json_beside_it,
         lambda c: c["fly"].update(machine_config="deploy/fly/machine.json")),
    Prop(check_fly_app_has_no_public_services,
         lambda c: c["fly"].update(http_service={"internal_port": 443})),
    Prop(check_containers_are_sidecar_and_shell,
         lambda c: _sc(c, "sidecar").update(name="sideproxy")),
    Prop(check_shell_waits_for_a_healthy_sidecar,
         lambda c: _sc(c, "shell")["depends_on"][0].update(condition="started")),
    Prop(check_sidecar_health_check_runs_proxypilot_health,
         lambda c: _sc(c, "sidecar").update(healthchecks=[{"tcp": {"port": 443}}])),
    Prop(check_only_the_sidecar_lists_secrets,
         lambda c: _sc(c, "shell").update(secrets=[{"env_var": "GH_TOKEN", "name": "GH_TOKEN"}])),
    Prop(check_sidecar_secrets_are_its_targets,
         lambda c: _sc(c, "sidecar")["secrets"].pop()),
    Prop(check_shell_has_a_dummy_for_every_target,
         lambda c: _sc(c, "shell")["env"].pop("OPENAI_API_KEY")),
    Prop(check_sidecar_is_a_tlsproxy_dropin_for_our_tokenizer,
         lambda c: _sc(c, "sidecar")["env"].update(PROXY="http://tokenizer.flycast")),
    Prop(check_shell_runs_the_trust_bootstrap_at_start,
         lambda c: _sc(c, "shell").pop("entrypoint")),
    Prop(check_shell_image_carries_the_bootstrap,
         lambda c: c.update(shell_dockerfile=c["shell_dockerfile"].replace(
             "COPY deploy/shell/proxypilot-trust", "# COPY deploy/shell/proxypilot-trust"))),
    Prop(check_shell_build_context_lets_in_what_it_copies,
         lambda c: c.update(shell_dockerignore=c["shell_dockerignore"].replace(
             "!deploy/shell/proxypilot-trust", ""))),
    Prop(check_no_value_looks_like_a_secret,
         lambda c: _sc(c, "shell")["env"].update(GH_TOKEN=SEALED_EXAMPLE),
         lambda c: _set_env(_pc(c, "agent"), "GH_TOKEN", "ghp_0123456789abcdefABCDEF01234567"),
         lambda c: c["k8s"]["secret.example.yaml"][0]["stringData"].update(
             GH_TOKEN=SEALED_EXAMPLE)),
    Prop(check_tokenizer_is_reachable_over_flycast_only,
         lambda c: c["tokenizer"]["services"][0]["ports"].append(
             {"port": 443, "handlers": ["tls", "http"]})),
    Prop(check_tokenizer_requires_fly_src,
         lambda c: c["tokenizer"]["env"].update(REQUIRE_FLYSRC="disabled")),
    Prop(check_tokenizer_open_key_is_not_in_the_config,
         lambda c: c["tokenizer"]["env"].update(OPEN_KEY="x")),
    Prop(check_tokenizer_runs_proxypilot_tokenizer,
         lambda c: c["tokenizer"].pop("processes")),
    Prop(check_each_fly_app_has_one_config,
         lambda c: c["other_fly_configs"].append({"app": "proxypilot"})),
    Prop(check_k8s_manifests_validate,
         lambda c: _pc(c, "sidecar").update(restartPolcy="Always")),
    Prop(check_kustomization_lists_the_manifests_but_not_the_secret_example,
         lambda c: c["kustomization"]["resources"].append("secret.example.yaml")),
    Prop(check_sidecar_is_a_native_sidecar,
         lambda c: _pc(c, "sidecar").pop("restartPolicy")),
    Prop(check_pod_lets_the_sidecar_bind_443,
         lambda c: agent_pod(c)["securityContext"].pop("sysctls")),
    Prop(check_proxypilot_containers_run_as_non_root,
         lambda c: _pc(c, "sidecar")["securityContext"].update(runAsNonRoot=False, runAsUser=0)),
    Prop(check_every_container_drops_all_capabilities,
         lambda c: _pc(c, "agent")["securityContext"]["capabilities"].update(add=["NET_ADMIN"])),
    Prop(check_proxypilot_containers_have_read_only_roots,
         lambda c: _pc(c, "sidecar")["securityContext"].pop("readOnlyRootFilesystem")),
    Prop(check_only_the_sidecar_reads_secrets,
         lambda c: _pc(c, "agent")["env"].append(
             {"name": "GH_TOKEN_SEALED",
              "valueFrom": {"secretKeyRef": {"name": "proxypilot-sealed", "key": "GH_TOKEN"}}})),
    Prop(check_host_aliases_route_every_target_to_both_loopbacks,
         lambda c: agent_pod(c)["hostAliases"][1]["hostnames"].remove("api.github.com")),
    Prop(check_startup_probe_runs_proxypilot_health,
         lambda c: _pc(c, "sidecar").update(startupProbe={"tcpSocket": {"port": 443}})),
    Prop(check_ca_key_stays_in_the_sidecar,
         lambda c: _pc(c, "agent").setdefault("volumeMounts", []).append(
             {"name": "sidecar-state", "mountPath": "/ca"})),
    Prop(check_agent_runs_the_trust_bootstrap_first,
         lambda c: _pc(c, "agent").update(command=["sleep"])),
    Prop(check_agent_has_a_dummy_for_every_target,
         lambda c: _set_env(_pc(c, "agent"), "GH_TOKEN", "")),
    Prop(check_pod_gives_the_agent_no_way_around_the_sidecar,
         lambda c: agent_pod(c).update(shareProcessNamespace=True)),
    Prop(check_sidecar_proxy_is_the_tokenizer_service,
         lambda c: _set_env(_pc(c, "sidecar"), "PROXY",
                            "http://proxypilot:hunter2@proxypilot-tokenizer:8080")),
    Prop(check_tokenizer_open_key_comes_from_a_secret,
         lambda c: _set_env(pod_containers(tokenizer_pod(c))["tokenizer"], "OPEN_KEY", "0" * 64)),
    Prop(check_fly_and_kubernetes_route_the_same_hosts,
         lambda c: _set_env(_pc(c, "sidecar"), "TARGETS", "api.github.com=GH_TOKEN")),
]
PROP_IDS = [p.check.__name__.removeprefix("check_") for p in PROPS]
BREAKS = [(p, b) for p in PROPS for b in p.breaks]
BREAK_IDS = [f"{p.check.__name__.removeprefix('check_')}-{p.breaks.index(b)}" for p, b in BREAKS]


@pytest.mark.parametrize("prop", PROPS, ids=PROP_IDS)
def test_property(prop):
    prop.check(copy.deepcopy(FILES))


@pytest.mark.parametrize("prop,breaks", BREAKS, ids=BREAK_IDS)
def test_property_check_catches_breakage(prop, breaks):
    ctx = copy.deepcopy(FILES)
    breaks(ctx)
    with pytest.raises(AssertionError):
        prop.check(ctx)


def test_no_second_fly_config_for_the_app():
    """The old root fly.toml deployed the sidecar alone, where nothing could call it."""
    strays = [p for p in ("fly.toml", "fly.json", "fly.yaml") if (ROOT / p).exists()]
    assert not strays, f"{strays}: the app's config is deploy/fly/fly.toml"


# ---- examples/shell: the entry point -------------------------------------------------------

def fake_bin(d, name, body):
    p = d / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return p


@pytest.mark.parametrize("trust_ok", [True, False])
def test_shell_entrypoint_runs_the_trust_bootstrap_before_the_command(tmp_path, trust_ok):
    log = tmp_path / "log"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_bin(bindir, "proxypilot-trust", f'echo "trust $*" >> {log}\nexit {0 if trust_ok else 1}\n')
    env_file = tmp_path / "env"
    env_file.write_text("SSL_CERT_FILE=/etc/proxypilot/ca-bundle.pem\n")
    r = run(["sh", str(EXAMPLES / "proxypilot-shell-entrypoint"), "sh", "-c",
             f'echo "command $SSL_CERT_FILE" >> {log}'],
            env={"PATH": f"{bindir}:{os.environ['PATH']}", "PROXYPILOT_ENV_FILE": str(env_file),
                 "PROXYPILOT_TRUST_ARGS": "--timeout 5"}, check=False)
    lines = log.read_text().splitlines()
    if trust_ok:
        assert r.returncode == 0, r.stderr
        assert lines == ["trust --timeout 5", "command /etc/proxypilot/ca-bundle.pem"]
    else:
        assert r.returncode != 0 and lines == ["trust --timeout 5"], (r.returncode, lines)


def test_example_scripts_parse():
    run(["sh", "-n", str(EXAMPLES / "github.sh")])
    for f in ("anthropic_example.py", "openai_example.py"):
        compile((EXAMPLES / f).read_text(), f, "exec")


# ---- scripts/fly-deploy.sh --------------------------------------------------------------------

TARGETS_FILE = ("GH_TOKEN=api.github.com\n# comment\n\n"
                "ANTHROPIC_API_KEY=api.anthropic.com:x-api-key\nOPENAI_API_KEY=api.openai.com\n")
REAL_TOKENS = {"GH_TOKEN": "ghp_realTOKENforTHEscript0123",
               "ANTHROPIC_API_KEY": "sk-ant-realKEYforTHEscript0123",
               "OPENAI_API_KEY": "sk-realKEYforTHEscript0123456"}


class Deploy:
    """scripts/fly-deploy.sh with a fake flyctl on PATH that records each call (directory,
    arguments, and stdin for `secrets import`) and answers 0."""

    def __init__(self, d, proxypilot):
        self.d = d
        self.bin = d / "bin"
        self.bin.mkdir()
        self.calls = d / "fly-calls.jsonl"
        recorder = d / "record_fly.py"
        recorder.write_text(
            "import json, os, sys\n"
            "stdin = sys.stdin.read() if sys.argv[1:3] == ['secrets', 'import'] else None\n"
            f"with open({str(self.calls)!r}, 'a') as f:\n"
            "    f.write(json.dumps({'cwd': os.getcwd(), 'args': sys.argv[1:],\n"
            "                        'stdin': stdin}) + '\\n')\n")
        fake_bin(self.bin, "fly", f'exec python3 {recorder} "$@"\n')
        (d / "targets").write_text(TARGETS_FILE)
        self.proxypilot = proxypilot

    def run(self, *args, env=None, drop=()):
        full = {k: v for k, v in os.environ.items() if k not in ("FLYCTL", "FLY_ORG")}
        full.update({"PATH": f"{self.bin}:{os.environ['PATH']}",
                     "PROXYPILOT": str(self.proxypilot), "PROXYPILOT_DEPLOY_TAG": "20261130T1200",
                     "SEAL_KEY": "ab" * 32, **REAL_TOKENS, **(env or {})})
        for k in drop:
            full.pop(k, None)
        return subprocess.run([str(DEPLOY_SCRIPT), *args], cwd=self.d, env=full, text=True,
                              capture_output=True, timeout=60)

    def fly_calls(self):
        if not self.calls.exists():
            return []
        return [json.loads(l) for l in self.calls.read_text().splitlines()]


EXPECTED_COMMANDS = [
    "{pp} seal --env-file targets --org my-org --app proxypilot > $SEALED",
    "fly secrets import --stage -a proxypilot < $SEALED",
    "fly deploy --build-only --push -a proxypilot -c deploy/fly/build.toml --dockerfile Dockerfile"
    " --image-label sidecar-20261130T1200",
    "fly deploy --build-only --push -a proxypilot -c deploy/fly/build.toml --dockerfile"
    " examples/shell/Dockerfile --ignorefile examples/shell/Dockerfile.dockerignore"
    " --image-label shell",
    "cd deploy/fly && fly deploy -a proxypilot -c fly.toml"
    " --image registry.fly.io/proxypilot:sidecar-20261130T1200 --ha=false",
    "fly ssh console -a proxypilot --container shell -C 'proxypilot-trust --check'",
]


def unseal(bin_path, open_key, blob):
    """The secret's JSON, its token redacted (`proxypilot unseal`)."""
    return json.loads(run([bin_path, "unseal"], input=blob, env={"OPEN_KEY": open_key}).stdout)


@pytest.fixture
def fake_proxypilot(tmp_path):
    """A proxypilot that records any call: a dry run must not seal either."""
    d = tmp_path / "pp"
    d.mkdir()
    return fake_bin(d, "proxypilot", f'echo "$*" >> {d}/calls\n'), d / "calls"


def test_fly_deploy_dry_run_prints_every_command_in_order_and_runs_none(tmp_path, fake_proxypilot):
    pp, pp_calls = fake_proxypilot
    dep = Deploy(tmp_path, pp)
    r = dep.run("--org", "my-org", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    printed = [l[2:] for l in r.stdout.splitlines() if l.startswith("+ ")]
    assert printed == [c.format(pp=pp) for c in EXPECTED_COMMANDS], r.stdout
    assert dep.fly_calls() == [] and not pp_calls.exists(), "a dry run ran something"
    for token in REAL_TOKENS.values():
        assert token not in r.stdout + r.stderr


def test_fly_deploy_seals_for_the_org_and_app_and_pipes_the_secrets_to_flyctl(tmp_path, bin_path):
    """The real run against a fake flyctl: the same commands, from the right directories, and
    what `fly secrets import` reads on stdin is one sealed secret per target, bound to the org
    and the app, which the tokenizer's key opens to the real token's host."""
    open_key, seal_key = harness.keygen(bin_path)
    dep = Deploy(tmp_path, bin_path)
    r = dep.run("--org", "my-org", env={"SEAL_KEY": seal_key})
    assert r.returncode == 0, r.stdout + r.stderr
    printed = [l[2:] for l in r.stdout.splitlines() if l.startswith("+ ")]
    assert printed == [c.format(pp=bin_path) for c in EXPECTED_COMMANDS], r.stdout
    calls = dep.fly_calls()
    assert [c["args"][:2] for c in calls] == [["secrets", "import"], ["deploy", "--build-only"],
                                              ["deploy", "--build-only"], ["deploy", "-a"],
                                              ["ssh", "console"]]
    assert [Path(c["cwd"]) for c in calls[1:]] == [ROOT, ROOT, FLY, ROOT]
    sealed = dict(l.split("=", 1) for l in calls[0]["stdin"].splitlines())
    assert sorted(sealed) == sorted(REAL_TOKENS)
    hosts = {"GH_TOKEN": "api.github.com", "ANTHROPIC_API_KEY": "api.anthropic.com",
             "OPENAI_API_KEY": "api.openai.com"}
    for name, blob in sealed.items():
        assert SEALED_LIKE.fullmatch(blob), name
        secret = unseal(bin_path, open_key, blob)
        assert secret["allowed_hosts"] == [hosts[name]], secret
        assert secret["fly_src_auth"]["allowed_orgs"] == ["my-org"], secret
        assert secret["fly_src_auth"]["allowed_apps"] == ["proxypilot"], secret
    everything = r.stdout + r.stderr + json.dumps([c["args"] for c in calls])
    for token in REAL_TOKENS.values():
        assert token not in everything, "a real token reached a command line or the output"
    for blob in sealed.values():
        assert blob not in r.stdout + r.stderr, "a sealed secret was printed"


@pytest.mark.parametrize("case,args,env,drop,says", [
    ("no SEAL_KEY", ["--org", "my-org"], {}, ["SEAL_KEY"], "SEAL_KEY is not set"),
    ("SEAL_KEY not a key", ["--org", "my-org"], {"SEAL_KEY": "ghp_oops"}, [], "64 hex"),
    ("no flyctl", ["--org", "my-org"], {"FLYCTL": "/nonexistent/fly"}, [],
     "flyctl is not installed"),
    ("no org", [], {}, [], "--org is missing"),
    ("a token not in the environment", ["--org", "my-org"], {}, ["OPENAI_API_KEY"],
     "OPENAI_API_KEY (the token for api.openai.com) is not set"),
])
def test_fly_deploy_refuses_before_running_anything(tmp_path, fake_proxypilot, case, args, env,
                                                    drop, says):
    pp, pp_calls = fake_proxypilot
    dep = Deploy(tmp_path, pp)
    r = dep.run(*args, env=env, drop=drop)
    assert r.returncode != 0 and says in r.stderr, (case, r.stdout, r.stderr)
    assert "+ " not in r.stdout and dep.fly_calls() == [] and not pp_calls.exists(), case


def test_fly_deploy_refuses_a_target_the_sidecar_does_not_route(tmp_path, fake_proxypilot):
    pp, _ = fake_proxypilot
    dep = Deploy(tmp_path, pp)
    (tmp_path / "targets").write_text(TARGETS_FILE + "SLACK_TOKEN=slack.com\n")
    r = dep.run("--org", "my-org", "--dry-run", env={"SLACK_TOKEN": "xoxb-1"})
    assert r.returncode != 0, r.stdout
    assert "slack.com=SLACK_TOKEN is not in the sidecar's TARGETS" in r.stderr, r.stderr
    # and a target routed under another variable name is refused the same way
    (tmp_path / "targets").write_text("GITHUB_TOKEN=api.github.com\n")
    r = dep.run("--org", "my-org", "--dry-run", env={"GITHUB_TOKEN": "x"})
    assert r.returncode != 0 and "api.github.com=GITHUB_TOKEN" in r.stderr, r.stderr


def test_deploy_scripts_pass_shellcheck():
    if not shutil.which("shellcheck"):
        skip_unless_ci("shellcheck is not installed (scripts/setup.sh installs it)")
    run(["shellcheck", str(DEPLOY_SCRIPT)])
    run(["shellcheck", "-s", "sh", str(EXAMPLES / "proxypilot-shell-entrypoint"),
         str(EXAMPLES / "github.sh")])


def test_fly_deploy_binds_the_secrets_to_a_machine_with_instance(tmp_path, bin_path):
    open_key, seal_key = harness.keygen(bin_path)
    dep = Deploy(tmp_path, bin_path)
    r = dep.run("--org", "my-org", "--instance", "e784079b449483", "--app", "other-app",
                env={"SEAL_KEY": seal_key})
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"+ {bin_path} seal --env-file targets --org my-org --app other-app --instance " \
           "e784079b449483 > $SEALED" in r.stdout, r.stdout
    # machine.json's shell image is registry.fly.io/proxypilot:shell, not other-app's: the
    # example shell is not built, the sidecar image is other-app's
    assert "examples/shell/Dockerfile" not in r.stdout, r.stdout
    assert "--image registry.fly.io/other-app:sidecar-20261130T1200" in r.stdout, r.stdout
    blob = dep.fly_calls()[0]["stdin"].splitlines()[0].split("=", 1)[1]
    secret = unseal(bin_path, open_key, blob)
    assert secret["fly_src_auth"]["allowed_instances"] == ["e784079b449483"], secret
    assert secret["fly_src_auth"]["allowed_apps"] == ["other-app"], secret


# ---- Kubernetes: the sidecar's security context, applied to the real binary ------------------

def sidecar_context(ctx):
    """What the container runtime would apply to the sidecar, read from agent.yaml."""
    pod = agent_pod(ctx)
    c = pod_containers(pod)["sidecar"]
    caps = c["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    sysctls = {s["name"]: s["value"] for s in pod["securityContext"].get("sysctls", [])}
    return {
        "uid": effective(pod, c, "runAsUser"), "gid": effective(pod, c, "runAsGroup"),
        "bounding": ",".join(["-all"] + ["+" + a.lower() for a in caps.get("add", [])]),
        "no_new_privs": effective(pod, c, "allowPrivilegeEscalation") is False,
        # the kernel's default when the pod sets nothing
        "unprivileged_port_start": sysctls.get("net.ipv4.ip_unprivileged_port_start", "1024"),
        "env": {e["name"]: e["value"] for e in c["env"] if "value" in e},
    }


def without_net_bind_service(ctx):
    _pc(ctx, "sidecar")["securityContext"]["capabilities"].pop("add")


def without_the_sysctl(ctx):
    agent_pod(ctx)["securityContext"].pop("sysctls")


@pytest.mark.parametrize("change,starts", [(None, True), (without_net_bind_service, False),
                                           (without_the_sysctl, False)],
                         ids=["as written", "without NET_BIND_SERVICE", "without the sysctl"])
def test_k8s_sidecar_security_context_starts_the_real_binary_on_443(bin_path, change, starts):
    """The image's binary carries the file capability cap_net_bind_service=+ep. Under the
    sidecar's security context as agent.yaml writes it (uid, capabilities dropped but
    NET_BIND_SERVICE, no_new_privs, the pod's sysctl), in a network namespace of its own, the
    real binary must start, listen on 443 and answer `proxypilot health` run the same way (the
    probe). Without NET_BIND_SERVICE in the bounding set the kernel refuses to exec it.

    The runtime is played by setpriv, then sh, then the binary: the process that execs the
    binary holds no capability, as under a runtime that gives a non-root process none. That is
    the strict case: no_new_privs then keeps the file capability from being granted, and only
    the sysctl lets it bind 443 (a runtime that leaves NET_BIND_SERVICE in the permitted set
    lets the file capability work, and the sysctl is then merely redundant)."""
    tools = ["unshare", "setpriv", "setcap", "ip", "sysctl"]
    if os.geteuid() != 0 or not all(shutil.which(t) for t in tools):
        skip_unless_ci(f"needs root and {', '.join(tools)}")
    ctx = copy.deepcopy(FILES)
    if change:
        change(ctx)
    sc = sidecar_context(ctx)
    d = Path(tempfile.mkdtemp(prefix="pp-k8s-"))
    try:
        d.chmod(0o755)
        binary = d / "proxypilot"
        shutil.copy(bin_path, binary)
        binary.chmod(0o755)
        run(["setcap", "cap_net_bind_service=+ep", str(binary)])
        workdir = d / "state"  # the emptyDir at the sidecar's workingDir
        workdir.mkdir()
        os.chown(workdir, sc["uid"], sc["gid"])
        _, seal_key = harness.keygen(bin_path)
        env = {**sc["env"], "PROXY": "http://127.0.0.1:9", "RUST_LOG": "info",
               **{var: harness.seal(bin_path, seal_key, "t", "--host", host)
                  for host, var in parse_targets(sc["env"]["TARGETS"]).items()}}
        as_container = ["setpriv", "--reuid", str(sc["uid"]), "--regid", str(sc["gid"]),
                        "--clear-groups", "--bounding-set", sc["bounding"]] + \
            (["--no-new-privs"] if sc["no_new_privs"] else [])
        script = f"""
            ip link set lo up
            sysctl -qw net.ipv4.ip_unprivileged_port_start={sc['unprivileged_port_start']}
            cd {workdir}
            {' '.join(as_container)} sh -c 'exec {binary} serve' > {d}/serve.log 2>&1 &
            for i in $(seq 30); do
              if {' '.join(as_container)} sh -c 'exec {binary} health --timeout 1s'; then
                kill $!; exit 0
              fi
              kill -0 $! 2>/dev/null || break
              sleep 0.1
            done
            kill $! 2>/dev/null; exit 1
        """
        r = run(["unshare", "--net", "sh", "-c", script], env=env, check=False, timeout=30)
        log = (d / "serve.log").read_text(errors="replace")
        if starts:
            assert r.returncode == 0, r.stdout + r.stderr + log
            assert "ok: https://localhost:443/healthz answered 200" in r.stdout, r.stdout
        else:
            assert r.returncode != 0, r.stdout + log
            why = "Operation not permitted" if change is without_net_bind_service else "443"
            assert why in log, log
    finally:
        shutil.rmtree(d, ignore_errors=True)
