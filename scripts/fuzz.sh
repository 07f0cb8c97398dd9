#!/usr/bin/env bash
# Coverage-guided fuzzing of every input path (tests/fuzz: cargo-fuzz targets, libFuzzer,
# AddressSanitizer; needs the nightly toolchain). Installs cargo-fuzz when it is missing,
# then runs each target for FUZZ_SECONDS (default 60) — or, with FUZZ_RUNS=N, for N
# executions — from its seed corpus in tests/fuzz/corpus (never modified: new inputs go to
# a scratch corpus) and prints the executions per target.
# A crash stops the script with libFuzzer's report; the input lands in
# tests/fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [target ...]          (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
if [ -n "${FUZZ_RUNS:-}" ]; then
  budget=(-runs="$FUZZ_RUNS")
  what="$FUZZ_RUNS runs"
else
  budget=(-max_total_time="$SECONDS_PER_TARGET")
  what="${SECONDS_PER_TARGET} s"
fi
if ! cargo +nightly fuzz --version > /dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir tests/fuzz)
cargo +nightly fuzz build --fuzz-dir tests/fuzz
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  if ! cargo +nightly fuzz run --fuzz-dir tests/fuzz "$t" "$scratch/$t" "tests/fuzz/corpus/$t" -- \
      "${budget[@]}" -rss_limit_mb=4096 -print_final_stats=1 > "$log" 2>&1; then
    grep -E -A4 "panicked|ERROR|SUMMARY" "$log" | cut -c1-300 | head -40
    echo "fuzz: $t FAILED (input in tests/fuzz/artifacts/$t/)"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  echo "fuzz: $t ok — $runs executions ($what), $cov, corpus $(ls "$scratch/$t" | wc -l) new inputs"
done
