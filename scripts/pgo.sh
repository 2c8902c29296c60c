#!/usr/bin/env bash
# `make pgo`: make the profile that `make build` optimizes with, pgo/proxypilot.profdata.xz.
#   1. build proxypilot instrumented (-Cprofile-generate), in target/pgo-gen;
#   2. run the training, bench/pgo.py, with it (the benchmark's servers, on loopback);
#   3. merge the counts with llvm-profdata (LLVM 19 or newer; llvm-19 from apt if none is
#      installed) and compress them; pgo/made-with.txt records the commit and the tools.
# About 15 minutes on 2 cores. pgo/README.md says when to run it.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
find_profdata() {
  for v in 30 29 28 27 26 25 24 23 22 21 20 19; do
    if [ -x "/usr/lib/llvm-$v/bin/llvm-profdata" ]; then
      echo "/usr/lib/llvm-$v/bin/llvm-profdata"
      return
    fi
  done
  return 1
}
if ! PROFDATA=$(find_profdata); then
  echo "pgo: installing llvm-19 (llvm-profdata)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends llvm-19 >/dev/null
  PROFDATA=$(find_profdata)
fi
scripts/bench-setup.sh

gen=$PWD/target/pgo-gen
raw=$gen/raw
CARGO_TARGET_DIR=$gen RUSTFLAGS="-Cprofile-generate=$raw" cargo build --release --locked
rm -rf "$raw"  # counts from build scripts run during the build
LLVM_PROFILE_FILE="$raw/proxypilot-%p.profraw" python3 bench/pgo.py "$gen/release/proxypilot"
"$PROFDATA" merge -o "$gen/proxypilot.profdata" "$raw"/*.profraw
mkdir -p pgo
xz -9 -c "$gen/proxypilot.profdata" > pgo/proxypilot.profdata.xz.tmp
mv pgo/proxypilot.profdata.xz.tmp pgo/proxypilot.profdata.xz
{
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src vendor Cargo.lock || echo ' (with uncommitted changes)')"
  echo "rustc: $(rustc -V)"
  echo "llvm-profdata: $("$PROFDATA" --version | grep -m1 'LLVM version' | sed 's/^ *//')"
  echo "made: $(date -u +%Y-%m-%d)"
} > pgo/made-with.txt
cat pgo/made-with.txt
echo "pgo: wrote pgo/proxypilot.profdata.xz ($(stat -c %s pgo/proxypilot.profdata.xz) bytes); make build uses it"
