#!/usr/bin/env bash
# Install what a fresh Debian machine lacks to build and test proxypilot. Idempotent: each step
# checks first and does nothing when the tool is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
# cmake: pingora-core's zlib-ng; perl/make/gcc: the vendored OpenSSL; curl/openssl: tests.
have cmake   || need_apt+=(cmake)
have perl    || need_apt+=(perl)
have make    || need_apt+=(make)
have cc      || need_apt+=(gcc)
have curl    || need_apt+=(curl)
have openssl || need_apt+=(openssl)
# xz: the release build's profile (pgo/proxypilot.profdata.xz, unpacked by scripts/pgo-flags.sh).
have xz      || need_apt+=(xz-utils)
# llvm-bolt and readelf: scripts/bolt.sh lays out the release binary by pgo/'s BOLT profile.
have_bolt() { have llvm-bolt || compgen -G '/usr/lib/llvm-*/bin/llvm-bolt' >/dev/null; }
have_bolt    || need_apt+=(bolt-19)
have readelf || need_apt+=(binutils)
have python3 || need_apt+=(python3 python3-pip)
# Real clients the end-to-end tests drive through the sidecar (tests/e2e/test_clients.py), and
# unshare/mount to give them a private /etc/hosts.
have gh      || need_apt+=(gh)
have node    || need_apt+=(nodejs)
have git     || need_apt+=(git)
have unshare || need_apt+=(util-linux)
# The shell's trust bootstrap is POSIX sh: `make lint` checks it.
have shellcheck || need_apt+=(shellcheck)
have mount   || need_apt+=(mount)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! have cargo; then
  echo "setup: cargo is missing: install Rust (https://rustup.rs) and run again" >&2
  exit 1
fi

# Python packages the end-to-end tests drive.
if ! python3 - <<'PY' 2>/dev/null
import importlib.metadata as m, pathlib, re, sys
for line in pathlib.Path("tests/requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, _, ver = re.split(r"(==)", line, maxsplit=1) if "==" in line else (line, "", "")
    name = re.sub(r"\[.*\]", "", name)
    if ver and m.version(name) != ver:
        sys.exit(1)
    if not ver:
        m.version(name)
PY
then
  echo "setup: installing Python test packages"
  python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt
fi
