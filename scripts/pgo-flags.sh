#!/usr/bin/env bash
# Print the RUSTFLAGS that `make build` (and `make lint`, so both share one build cache) add:
# `-Cprofile-use` with the profile `make pgo` made (pgo/proxypilot.profdata.xz, unpacked into
# target/pgo/), and, when there is a BOLT profile (pgo/proxypilot.bolt.yaml.xz), the link
# flag that keeps the relocations scripts/bolt.sh needs to move code. Prints nothing, and the
# build goes on without the profile, when PROXYPILOT_PGO=0, when there is no profile, or when
# rustc's LLVM is older than the llvm-profdata that wrote it (it could not read the file).
# pgo/README.md has the why.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${PROXYPILOT_PGO:-1}" = 0 ] && exit 0
src=pgo/proxypilot.profdata.xz
[ -f "$src" ] || exit 0
llvm=$(rustc -vV 2>/dev/null | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
need=$(sed -n 's/^llvm-profdata: .*LLVM version \([0-9]*\).*/\1/p' pgo/made-with.txt 2>/dev/null || true)
need=${need:-19}
if [ -z "$llvm" ] || [ "$llvm" -lt "$need" ]; then
  echo "pgo: rustc's LLVM (${llvm:-unknown}) is older than $need, which wrote $src:" \
       "building without the profile" >&2
  exit 0
fi
out=target/pgo/proxypilot.profdata
if [ ! -f "$out" ] || [ "$src" -nt "$out" ]; then
  mkdir -p target/pgo
  xz -dc "$src" > "$out.tmp"
  mv "$out.tmp" "$out"
fi
relocs=""
if [ -f pgo/proxypilot.bolt.yaml.xz ]; then relocs=" -Clink-arg=-Wl,--emit-relocs"; fi
echo "-Cprofile-use=$PWD/$out$relocs"
