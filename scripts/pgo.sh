#!/usr/bin/env bash
# `make pgo`: make the two profiles that `make build` optimizes with (pgo/README.md):
#   1. pgo/proxypilot.profdata.xz, for rustc's -Cprofile-use:
#      a. build proxypilot instrumented (-Cprofile-generate), in target/pgo-gen;
#      b. run the training, bench/pgo.py, with it (the benchmark's servers, on loopback);
#      c. merge the counts with llvm-profdata (LLVM 19 or newer; llvm-19 from apt if none is
#         installed) and compress them;
#   2. pgo/proxypilot.bolt.yaml.xz, for llvm-bolt (scripts/bolt.sh), made on the binary that
#      `make build` now links with the new profile:
#      a. build it as `make build` does, without the BOLT step;
#      b. instrument it with llvm-bolt -instrument (bolt-19 from apt if none is installed);
#      c. run the same training with it, merge the counts (merge-fdata) and write them as
#         BOLT's YAML profile, which names functions rather than addresses.
#   pgo/made-with.txt records the commit and the tools.
# About 12 minutes on 2 cores (11.3 in a fresh clone). `scripts/pgo.sh --bolt-only` makes only
# the second profile (about a minute after `make build`, whose build it reuses), for a binary
# that changed since the training but whose first profile is still good.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
# The newest /usr/lib/llvm-N (N >= 19) that has tool $1; Debian's package $2 when none has.
find_llvm_tool() {
  for v in 30 29 28 27 26 25 24 23 22 21 20 19; do
    if [ -x "/usr/lib/llvm-$v/bin/$1" ]; then
      echo "/usr/lib/llvm-$v/bin/$1"
      return
    fi
  done
  return 1
}
llvm_tool() {
  if ! find_llvm_tool "$1"; then
    echo "pgo: installing $2 ($1)" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$2" >/dev/null
    find_llvm_tool "$1"
  fi
}
bolt_only=0
if [ "${1:-}" = --bolt-only ]; then bolt_only=1; fi
PROFDATA=$(llvm_tool llvm-profdata llvm-19)
BOLT=$(llvm_tool llvm-bolt bolt-19)
scripts/bench-setup.sh

gen=$PWD/target/pgo-gen
mkdir -p pgo
# 1. rustc's profile, from an instrumented build in its own target directory.
if [ "$bolt_only" = 0 ]; then
  raw=$gen/raw
  CARGO_TARGET_DIR=$gen RUSTFLAGS="-Cprofile-generate=$raw" cargo build --release --locked
  rm -rf "$raw"  # counts from build scripts run during the build
  LLVM_PROFILE_FILE="$raw/proxypilot-%p.profraw" python3 bench/pgo.py "$gen/release/proxypilot"
  "$PROFDATA" merge -o "$gen/proxypilot.profdata" "$raw"/*.profraw
  xz -9 -c "$gen/proxypilot.profdata" > pgo/proxypilot.profdata.xz.tmp
  mv pgo/proxypilot.profdata.xz.tmp pgo/proxypilot.profdata.xz
  echo "pgo: wrote pgo/proxypilot.profdata.xz ($(stat -c %s pgo/proxypilot.profdata.xz) bytes)"
fi

# 2. The binary `make build` links (same flags, so the same cache), without the BOLT step.
# Removing the file makes cargo put its own linker output there again, even when nothing
# changed (a file scripts/bolt.sh laid out replaces cargo's).
flags=$(scripts/pgo-flags.sh)
case "$flags" in *--emit-relocs*) ;; *) flags="$flags -Clink-arg=-Wl,--emit-relocs" ;; esac
rm -f target/release/proxypilot
RUSTFLAGS="${RUSTFLAGS:-} $flags" cargo build --release --locked
bolted=$gen/bolt
rm -rf "$bolted" && mkdir -p "$bolted"
"$BOLT" target/release/proxypilot -instrument -o "$bolted/proxypilot" \
  --instrumentation-file="$bolted/counts" --instrumentation-file-append-pid > "$bolted/instrument.log" 2>&1
python3 bench/pgo.py "$bolted/proxypilot"
"$(dirname "$BOLT")/merge-fdata" "$bolted"/counts.*.fdata > "$bolted/merged.fdata"
# Reading the counts against the binary they were made on, with -w, writes them as YAML.
"$BOLT" target/release/proxypilot -o "$bolted/check" -data="$bolted/merged.fdata" \
  -w "$bolted/proxypilot.bolt.yaml" > "$bolted/convert.log" 2>&1
xz -9 -c "$bolted/proxypilot.bolt.yaml" > pgo/proxypilot.bolt.yaml.xz.tmp
mv pgo/proxypilot.bolt.yaml.xz.tmp pgo/proxypilot.bolt.yaml.xz
echo "pgo: wrote pgo/proxypilot.bolt.yaml.xz ($(stat -c %s pgo/proxypilot.bolt.yaml.xz) bytes)"

# One commit line per profile: with --bolt-only the first keeps the commit it was made on.
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src vendor Cargo.lock || echo ' (with uncommitted changes)')"
pgo_commit=$commit
if [ "$bolt_only" = 1 ]; then
  pgo_commit=$(sed -n 's/^commit: //p' pgo/made-with.txt 2>/dev/null || true)
  pgo_commit=${pgo_commit:-unknown}
fi
{
  echo "commit: $pgo_commit"
  echo "bolt commit: $commit"
  echo "rustc: $(rustc -V)"
  echo "llvm-profdata: $("$PROFDATA" --version | grep -m1 'LLVM version' | sed 's/^ *//')"
  echo "llvm-bolt: $("$BOLT" --version | grep -m1 'LLVM version' | sed 's/^ *//')"
  echo "made: $(date -u +%Y-%m-%d)"
} > pgo/made-with.txt
cat pgo/made-with.txt
echo "pgo: make build uses both profiles"
