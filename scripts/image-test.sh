#!/usr/bin/env bash
# `make image-test`: build the container image around a binary built on this machine and run it
# the way it ships: as its non-root user, listening on 443, in drop-in mode (TARGETS / PROXY).
#
# - PROXYPILOT_BIN: the binary to put in the image (default target/release/proxypilot); it is
#   copied (and stripped) to target/image/proxypilot and built into the Dockerfile's target
#   `runtime-prebuilt`, so no Rust toolchain image is needed (none can be pulled here).
# - The base image debian:bookworm-slim cannot be pulled either: it is made once with mmdebstrap
#   from Debian's packages and imported as localhost/debian:bookworm-slim (kept for next time).
# - podman runs with deploy/image/containers.conf (runc, cgroupfs, no default ulimits).
# - Checks: the sidecar runs as a non-root uid and binds 443 on the host's loopback
#   (--network host, so the port below 1024 is the file capability's doing, not the container
#   network's sysctl); `proxypilot health` inside the container; the HEALTHCHECK status; the CA
#   fetched from https://localhost/ca-cert.pem; one request through sidecar -> our tokenizer (on
#   the host) -> a local HTTPS stand-in for api.github.com, which must see the real token.
# Exits non-zero on any failure; removes the container and processes it started. The image
# (PROXYPILOT_IMAGE, default localhost/proxypilot:image-test) and the base image are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BIN=${PROXYPILOT_BIN:-target/release/proxypilot}
IMAGE=${PROXYPILOT_IMAGE:-localhost/proxypilot:image-test}
BASE=localhost/debian:bookworm-slim
export CONTAINERS_CONF=$ROOT/deploy/image/containers.conf
CTR=proxypilot-image-test-$$

say() { echo "image-test: $*"; }
die() { echo "image-test: FAIL: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

[ -x "$BIN" ] || die "no binary at $BIN (build it, or set PROXYPILOT_BIN)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

# ---- what this needs, installed only when missing (idempotent, like scripts/setup.sh)
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need_apt=()
have podman || need_apt+=(podman)
# runc, not crun: crun fails on these machines (hybrid cgroups, setrlimit).
have runc || [ -x /usr/sbin/runc ] || need_apt+=(runc)
have curl || need_apt+=(curl)
have openssl || need_apt+=(openssl)
have python3 || need_apt+=(python3)
have ss || need_apt+=(iproute2)
if ! podman image exists "$BASE" 2>/dev/null; then
  have mmdebstrap || need_apt+=(mmdebstrap)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Rootless podman cannot give the container's user port 443 in the host's network namespace.
if [ "$(id -u)" != 0 ] && [ "$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)" -gt 443 ]; then
  die "run as root: the container shares the host's network and binds 443 (rootless podman cannot)"
fi

# ---- port 443 on the host's loopback must be free (the container shares the host's network)
LISTENING=$(ss -Hltnp 'sport = :443')
[ -z "$LISTENING" ] ||
  die "port 443 is already in use on this machine; stop what uses it and retry:"$'\n'"$LISTENING"

WORK=$(mktemp -d /tmp/proxypilot-image-test.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ $rc -ne 0 ]; then
    if podman container exists "$CTR" 2>/dev/null; then
      echo "---- container log (last 30 lines)" >&2
      podman logs "$CTR" 2>&1 | tail -30 >&2 || true
    fi
    for f in tokenizer upstream; do
      if [ -s "$WORK/$f.log" ]; then echo "---- $f log (last 15 lines)" >&2; tail -15 "$WORK/$f.log" >&2; fi
    done
  fi
  # (the sidecar takes about 1 s to stop on SIGTERM; podman rm can lose a race with a container
  # that is exiting by itself: try again)
  for _ in 1 2 3 4 5; do
    podman container exists "$CTR" 2>/dev/null || break
    podman rm -f -t 10 "$CTR" >/dev/null 2>&1 || sleep 1
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT INT TERM

# ---- the base image: a Debian bookworm minbase made as debian:bookworm-slim is (no docs,
# man pages or locales; apt keeps no package cache), from Debian's packages.
if ! podman image exists "$BASE"; then
  say "making $BASE with mmdebstrap (once)"
  hooks=()
  [ -d /usr/share/mmdebstrap/hooks/merged-usr ] &&
    hooks=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)   # usr-is-merged, not usrmerge+perl
  mmdebstrap --variant=minbase "${hooks[@]}" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/groff/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --aptopt='Dir::Cache::pkgcache "";' --aptopt='Dir::Cache::srcpkgcache "";' \
    bookworm "$WORK/rootfs.tar" </dev/null >"$WORK/mmdebstrap.log" 2>&1 ||
    { tail -20 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
  podman import --change 'CMD ["bash"]' "$WORK/rootfs.tar" "$BASE" >/dev/null
  rm -f "$WORK/rootfs.tar"
fi

# ---- the image, with the host-built binary (stripped, as the Dockerfile's build stage does)
mkdir -p target/image
cp "$BIN" target/image/proxypilot
if have strip; then strip target/image/proxypilot; fi
say "building $IMAGE from $BIN"
OLD_ID=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
# --format docker: OCI images have no HEALTHCHECK. --layers=false: no intermediate images left.
if ! podman build --format docker --layers=false --pull=never \
      --target runtime-prebuilt --build-arg PROXYPILOT_BIN=target/image/proxypilot \
      -t "$IMAGE" -f Dockerfile . >"$WORK/build.log" 2>&1; then
  tail -30 "$WORK/build.log" >&2
  die "podman build failed"
fi
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
# The image this build replaced under the same tag (now untagged), unless a container uses it.
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  podman rmi "$OLD_ID" >/dev/null 2>&1 || true
fi

# ---- the stack on the host: a stand-in for api.github.com (HTTPS) and our tokenizer
cd "$WORK"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
{
  openssl req -x509 "${ec[@]}" -keyout upca.key -out upca.pem -days 2 \
    -subj "/CN=proxypilot image-test upstream CA" -addext basicConstraints=critical,CA:TRUE
  openssl req "${ec[@]}" -keyout up.key -out up.csr -subj /CN=api.github.com
  printf 'subjectAltName=DNS:api.github.com\nextendedKeyUsage=serverAuth\n' >ext.cnf
  openssl x509 -req -in up.csr -CA upca.pem -CAkey upca.key -CAcreateserial -out up.pem \
    -days 2 -extfile ext.cnf
} >pki.log 2>&1 || { cat pki.log >&2; die "openssl could not make the test PKI"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # what, command...: retry for up to 15 s
  local what=$1; shift
  for _ in $(seq 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up"
}

python3 "$ROOT/tests/e2e/upstream.py" --cert up.pem --key up.key --port 0 \
  --log requests.jsonl --ready upstream.port >upstream.log 2>&1 &
pids+=($!)
wait_for "the upstream" test -s upstream.port
UPSTREAM_PORT=$(cat upstream.port)

KEYS=$("$BIN" keygen)
OPEN_KEY=$(sed -n 's/^OPEN_KEY=//p' <<<"$KEYS")
SEAL_KEY=$(sed -n 's/^SEAL_KEY=//p' <<<"$KEYS")
{ [ -n "$OPEN_KEY" ] && [ -n "$SEAL_KEY" ]; } || die "proxypilot keygen printed no key pair"
TOKEN="ghp_imagetest_$(openssl rand -hex 12)"
SEALED=$(printf '%s' "$TOKEN" | SEAL_KEY=$SEAL_KEY "$BIN" seal --host api.github.com)

TOKENIZER_PORT=$(free_port)
OPEN_KEY=$OPEN_KEY "$BIN" tokenizer --listen "127.0.0.1:$TOKENIZER_PORT" --upstream-ca upca.pem \
  --connect-to "api.github.com:443:127.0.0.1:$UPSTREAM_PORT" >tokenizer.log 2>&1 &
pids+=($!)
wait_for "the tokenizer" bash -c "exec 3<>/dev/tcp/127.0.0.1/$TOKENIZER_PORT"

# ---- the sidecar in the container: the image's own user, entrypoint and command (`serve`),
# PORT unset (443 by default), the sealed secret in the env var TARGETS names.
say "starting $CTR (--network host, image user, port 443)"
# podman prints errors about systemd timers for the HEALTHCHECK (none here); the check is run
# by hand below with `podman healthcheck run`.
podman run -d --name "$CTR" --network host \
  -e TARGETS=api.github.com=GH_TOKEN -e GH_TOKEN="$SEALED" \
  -e PROXY="http://127.0.0.1:$TOKENIZER_PORT" "$IMAGE" >run.log 2>&1 ||
  { cat run.log >&2; die "podman run failed"; }

healthy=""
for _ in $(seq 100); do
  if HEALTH_OUT=$(podman exec "$CTR" proxypilot health 2>&1); then healthy=1; break; fi
  podman container inspect --format '{{.State.Running}}' "$CTR" 2>/dev/null | grep -q true ||
    die "the container exited: $(podman logs "$CTR" 2>&1 | tail -5)"
  sleep 0.2
done
[ -n "$healthy" ] || die "proxypilot health in the container: $HEALTH_OUT"
say "proxypilot health: $HEALTH_OUT"

podman healthcheck run "$CTR" >hc.log 2>&1 || { cat hc.log >&2; die "podman healthcheck run failed"; }
HC_STATUS=$(podman container inspect --format '{{.State.Health.Status}}' "$CTR" 2>/dev/null ||
            podman container inspect --format '{{.State.Healthcheck.Status}}' "$CTR")
[ "$HC_STATUS" = healthy ] || die "HEALTHCHECK status is '$HC_STATUS', not healthy"

EXEC_UID=$(podman exec "$CTR" id -u)
[ "$EXEC_UID" != 0 ] || die "podman exec runs as root (uid 0)"
# The sidecar itself (PID 1): its uid, and the one capability it got from the file.
SERVE_UID=$(podman exec "$CTR" awk '/^Uid:/ {print $2}' /proc/1/status)
[ "$SERVE_UID" != 0 ] || die "the sidecar runs as root"
CAPEFF=$(podman exec "$CTR" awk '/^CapEff:/ {print $2}' /proc/1/status)
[ "$CAPEFF" = 0000000000000400 ] ||
  die "the sidecar's effective capabilities are $CAPEFF, not just cap_net_bind_service (0x400)"
for addr in 127.0.0.1:443 '[::1]:443'; do
  ss -Hltnp 'sport = :443' | awk -v a="$addr" '$4 == a && /proxypilot/ {found=1} END {exit !found}' ||
    die "proxypilot does not listen on $addr: $(ss -Hltnp 'sport = :443')"
done
UNPRIV_START=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null || echo '?')
podman exec "$CTR" test ! -e /etc/proxypilot/local.yaml || die "conf/local.yaml is in the image"
CA_LS=$(podman exec "$CTR" ls -ln /var/lib/proxypilot)
grep -qE '^-rw------- 1 10001 10001 .* ca-key\.pem$' <<<"$CA_LS" ||
  die "ca-key.pem is not 0600 and owned by 10001 in /var/lib/proxypilot: $CA_LS"

# ---- the CA, as a client would fetch it, and the same as the one in the working directory
curl -sSf --max-time 5 -k --resolve localhost:443:127.0.0.1 -o ca.pem https://localhost/ca-cert.pem ||
  die "could not fetch https://localhost:443/ca-cert.pem"
podman exec "$CTR" cat /var/lib/proxypilot/ca.pem | cmp -s - ca.pem ||
  die "the served CA differs from /var/lib/proxypilot/ca.pem"
# ...and the sidecar's certificate verifies against it.
podman exec "$CTR" proxypilot health --ca /var/lib/proxypilot/ca.pem >/dev/null 2>&1 ||
  die "proxypilot health --ca ca.pem failed (certificate does not verify against the CA)"

# ---- one proxied request, with the dummy token
CODE=$(curl -sS --max-time 10 --resolve api.github.com:443:127.0.0.1 --cacert ca.pem \
  -H 'Authorization: Bearer dummy' -o response.json -w '%{http_code}' https://api.github.com/user) ||
  die "curl through the sidecar failed"
[ "$CODE" = 200 ] || die "GET https://api.github.com/user through the sidecar: $CODE $(head -c 300 response.json)"
python3 - "$TOKEN" requests.jsonl <<'PY' || die "the upstream did not see the real token (and only it)"
import json, sys
token, log = sys.argv[1], sys.argv[2]
reqs = [json.loads(line) for line in open(log)]
assert len(reqs) == 1, f"{len(reqs)} requests reached the upstream"
r = reqs[0]
auth = [v for k, v in r["headers"] if k.lower() == "authorization"]
assert r["method"] == "GET" and r["path"] == "/user", r
assert auth == [f"Bearer {token}"], "Authorization at the upstream is not the sealed token"
assert "dummy" not in json.dumps(r), "the dummy token reached the upstream"
assert not any(k.lower().startswith("proxy-") for k, _ in r["headers"]), "a Proxy-* header leaked"
PY

cat <<SUMMARY

image-test: OK
  image              $IMAGE, $SIZE bytes ($((SIZE / 1000000)) MB), base $BASE
  podman             $(podman version --format '{{.Client.Version}}'), $(podman info --format '{{.Host.OCIRuntime.Version}}' | head -1)
  binary             $BIN ($(stat -c %s "$ROOT/target/image/proxypilot") bytes as put in the image)
  user               podman exec id -u: $EXEC_UID; sidecar (PID 1) uid $SERVE_UID, CapEff $CAPEFF (cap_net_bind_service)
  port               443 on 127.0.0.1 and [::1] with --network host (host ip_unprivileged_port_start=$UNPRIV_START)
  proxypilot health  $HEALTH_OUT
  HEALTHCHECK        $HC_STATUS
  CA                 /var/lib/proxypilot/ca.pem = https://localhost/ca-cert.pem; ca-key.pem 0600, uid 10001
  proxied request    GET https://api.github.com/user with 'Bearer dummy' -> $CODE; the upstream saw the sealed token
SUMMARY
