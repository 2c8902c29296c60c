#!/usr/bin/env bash
# After `cargo build` in `make build` (and the Dockerfile): lay out BINARY's machine code by the
# profile in pgo/proxypilot.bolt.yaml.xz with llvm-bolt (post-link optimization on top of the
# profile-guided build; pgo/README.md has the why and the figures). The hot paths of every
# function the training ran go together, in the order they call each other, and their cold
# blocks move out of the way. BINARY is replaced in place, once: a binary BOLT already laid out
# is left as it is.
#
#   scripts/bolt.sh target/release/proxypilot
#
# The binary is left as cargo built it, with one line on stderr saying why, when:
#   - PROXYPILOT_PGO=0 or PROXYPILOT_BOLT=0 is set (no line: that was asked for);
#   - there is no profile (no line);
#   - no llvm-bolt is installed (`make setup` installs Debian's bolt-19), or LLVM_BOLT names
#     no program;
#   - the binary has no relocations to move code with (it was not linked with --emit-relocs,
#     which scripts/pgo-flags.sh adds);
#   - llvm-bolt fails: the binary works either way, only slower.
# llvm-bolt's output is kept beside the binary, in BINARY.bolt.log.
set -euo pipefail
bin=${1:?usage: scripts/bolt.sh BINARY}
case "$bin" in /*) ;; *) bin=$PWD/$bin ;; esac
cd "$(dirname "$0")/.."
[ "${PROXYPILOT_PGO:-1}" = 0 ] && exit 0
[ "${PROXYPILOT_BOLT:-1}" = 0 ] && exit 0
src=pgo/proxypilot.bolt.yaml.xz
[ -f "$src" ] || exit 0

skip() { echo "bolt: $*: $bin is not laid out by BOLT" >&2; exit 0; }
sections=$(readelf -SW "$bin") || skip "readelf cannot read it"
if grep -q '\.note\.bolt_info' <<<"$sections"; then exit 0; fi
grep -q '\.rela\.text' <<<"$sections" || skip "it has no relocations (link it with --emit-relocs)"

# LLVM_BOLT names the llvm-bolt to use; otherwise the newest /usr/lib/llvm-N's, then PATH's.
find_bolt() {
  if [ -n "${LLVM_BOLT:-}" ]; then
    [ -x "$LLVM_BOLT" ] && echo "$LLVM_BOLT"
    return
  fi
  for v in 30 29 28 27 26 25 24 23 22 21 20 19; do
    if [ -x "/usr/lib/llvm-$v/bin/llvm-bolt" ]; then
      echo "/usr/lib/llvm-$v/bin/llvm-bolt"
      return
    fi
  done
  command -v llvm-bolt || return 1
}
bolt=$(find_bolt) || skip "no llvm-bolt (make setup installs bolt-19)"

profile=target/pgo/proxypilot.bolt.yaml
if [ ! -f "$profile" ] || [ "$src" -nt "$profile" ]; then
  mkdir -p target/pgo
  xz -dc "$src" > "$profile.tmp"
  mv "$profile.tmp" "$profile"
fi

# ext-tsp orders each function's blocks, cdsort the functions; cold blocks go to .text.cold.
# -infer-stale-profile keeps the counts of a function whose code changed since the training
# where its blocks still match. -no-huge-pages: no 2 MiB padding before the new code.
log=$bin.bolt.log
if ! "$bolt" "$bin" -o "$bin.bolt" -data="$profile" -infer-stale-profile \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
    -split-eh -icf=1 -use-gnu-stack -no-huge-pages > "$log" 2>&1; then
  rm -f "$bin.bolt"
  tail -n 3 "$log" >&2
  skip "llvm-bolt failed ($log)"
fi
chmod --reference="$bin" "$bin.bolt"
mv "$bin.bolt" "$bin"
# What of the profile applied: the functions it covers, and any whose code changed since.
grep -E 'have non-empty execution profile|stale' "$log" | sed 's/^BOLT-[A-Z]*: /bolt: /' || true
