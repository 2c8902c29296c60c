#!/usr/bin/env bash
# Install what `make bench` needs on a fresh Debian bookworm machine (apt + PyPI only).
# Idempotent: each step checks first and does nothing when the tool is already there.
# Called by `make bench`, not by `make setup` / `make test`.
#
#   nginx            the fast HTTPS upstream, and nginx doing the sidecar's job
#   nghttp2-client   h2load: HTTP/1.1 keep-alive, HTTP/2 and connection-per-request load,
#                    with a per-request log for percentiles
#   openssl          the throwaway CA and certificate made at the start of each run
#   python3-venv     a venv for mitmproxy (bench/requirements.txt), apart from the test packages
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
have() { command -v "$1" >/dev/null 2>&1; }
VENV=${BENCH_VENV:-$HOME/.cache/proxypilot/bench-venv}

need_apt=()
have nginx || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
have h2load  || need_apt+=(nghttp2-client)
have openssl || need_apt+=(openssl)
have python3 || need_apt+=(python3)
if [ ! -x "$VENV/bin/python" ] && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bench-setup: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi

# mitmproxy in a venv of its own: its pinned dependencies differ from the test packages'.
if [ ! -x "$VENV/bin/python" ]; then
  echo "bench-setup: creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, pathlib, sys
for line in pathlib.Path("bench/requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
        name, _, ver = line.partition("==")
        if m.version(name) != ver:
            sys.exit(1)
PY
then
  echo "bench-setup: installing bench/requirements.txt into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r bench/requirements.txt
fi
