#!/usr/bin/env bash
# Fuzz proxypilot's parsers with cargo-fuzz (libFuzzer) for a bounded time each, then print a
# table of executions, corpus and crashes. Not part of `make test`: run `make fuzz`.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      default: 60 s (or $FUZZ_SECONDS), every target
#
# Environment:
#   FUZZ_SECONDS     seconds per target when not given as the first argument (default 60)
#   FUZZ_SANITIZER   address (default) or none; if the address build fails, falls back to none
#   CARGO_BUILD_JOBS as usual (set 1 on a shared machine)
#
# Inputs: fuzz/seeds/<target> (committed) and fuzz/dict/<target>.dict; the growing corpus goes
# to fuzz/corpus/<target>, crashing inputs to fuzz/artifacts/<target> (both ignored by git).
# Reproduce a crash: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> --release fuzz/artifacts/<target>/crash-...
# then add it to tests/fuzz_regressions.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

# cargo-fuzz passes -Z flags (sanitizer, coverage instrumentation); the stable toolchain accepts
# them with RUSTC_BOOTSTRAP=1, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1

seconds="${FUZZ_SECONDS:-60}"
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then
  seconds="$1"
  shift
fi
all_targets=(authority secret_json tokenizer_header fmt flysrc config_yaml policy)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [[ -f "fuzz/fuzz_targets/$t.rs" ]] || { echo "fuzz: no target $t (have: ${all_targets[*]})" >&2; exit 2; }
done

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

sanitizer="${FUZZ_SANITIZER:-address}"
echo "fuzz: building targets (--release, --sanitizer $sanitizer)"
if ! cargo fuzz build --release --sanitizer "$sanitizer"; then
  if [[ "$sanitizer" == none ]]; then
    echo "fuzz: build failed" >&2
    exit 1
  fi
  echo "fuzz: build with --sanitizer $sanitizer failed; retrying with --sanitizer none" >&2
  sanitizer=none
  cargo fuzz build --release --sanitizer none
fi

logdir="fuzz/logs"
mkdir -p "$logdir"
rows=()
failed=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048)
  [[ -f "fuzz/dict/$t.dict" ]] && args+=(-dict="fuzz/dict/$t.dict")
  dirs=("fuzz/corpus/$t")
  [[ -d "fuzz/seeds/$t" ]] && dirs+=("fuzz/seeds/$t")
  log="$logdir/$t.log"
  echo "fuzz: $t for ${seconds}s (log: $log)"
  set +e
  # The corpus directory first: libFuzzer adds new inputs there; the seeds are read only.
  cargo fuzz run "$t" --release --sanitizer "$sanitizer" "${dirs[@]}" \
    -- "${args[@]}" </dev/null >"$log" 2>&1
  rc=$?
  set -e
  stat() { sed -n "s/^stat::$1: *\([0-9]*\).*/\1/p" "$log" | tail -1; }
  execs=$(stat number_of_executed_units)
  new=$(stat new_units_added)
  # The last status line: "#N DONE cov: C ft: F corp: U/SIZE ..."
  status=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$status")
  crashes=$(( $(find "fuzz/artifacts/$t" -type f | wc -l) - before ))
  if [[ $rc -ne 0 || $crashes -gt 0 ]]; then
    failed=1
    (( crashes > 0 )) || crashes="? (exit $rc)"
    grep -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|Test unit written to' "$log" | head -4 | sed 's/^/    /' >&2 || true
  fi
  rows+=("$t|$seconds|${execs:-?}|${new:-?}|${corp:-?}|${cov:-?}|$crashes")
done

echo
echo "sanitizer: $sanitizer"
fmt='%-17s %7s %12s %9s %7s %9s  %s\n'
printf "$fmt" target seconds executions "new units" corpus coverage crashes
for r in "${rows[@]}"; do
  IFS='|' read -r -a f <<<"$r"
  printf "$fmt" "${f[@]}"
done
if [[ $failed -ne 0 ]]; then
  echo "fuzz: crashes found: see fuzz/artifacts/ and fuzz/logs/" >&2
  exit 1
fi
