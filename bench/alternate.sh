#!/usr/bin/env bash
# Two builds of the runtime side by side: `zambac-run bench` of each binary on each engine,
# alternating (the memory bandwidth of a shared machine moves ~30% minute to minute, so a
# comparison is only fair within one run, interleaved).
#
#   bench/alternate.sh OLD_ZAMBAC_RUN NEW_ZAMBAC_RUN ENGINE... [-- BENCH_ARGS...]
#
# BENCH_ARGS go to every `zambac-run bench` (default: --prompt-len 64 --new-tokens 32).
# BATCHES (default "1 16") are the --batch values, ROUNDS (default 3) the rounds. Prints
# one line per run: round, engine, binary, batch, prefill ms and decode tokens/s (all
# sequences' tokens counted).
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
old=$1 new=$2
shift 2
engines=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  engines+=("$1")
  shift
done
[ "${1:-}" = "--" ] && shift
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--prompt-len 64 --new-tokens 32)
for bin in "$old" "$new"; do
  [ -x "$bin" ] || { echo "alternate: $bin is not an executable" >&2; exit 2; }
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs"
for r in $(seq "${ROUNDS:-3}"); do
  for engine in "${engines[@]}"; do
    for bin in "$old" "$new"; do
      for b in ${BATCHES:-1 16}; do
        "$bin" bench "$engine" "${args[@]}" --batch "$b" --json | python3 -c "
import json, sys
v = json.load(sys.stdin)
print(f\"$(date +%T) round $r  $(basename "$engine")  $bin  batch {v['batch']:>2}: \"
      f\"prefill {v['prefill_s'] * 1e3:9.1f} ms, decode {v['decode_tok_per_s']:8.1f} tok/s\")"
      done
    done
  done
done
