#!/usr/bin/env bash
# Serving benchmark, in one run: for each model shape (bf16, random weights),
#   1. batched decode — `zambac-run bench --batch 1` and `--batch 16`, alternating, and the
#      ratio of their decode tokens/s (all sequences' tokens counted);
#   2. the server under load — bench/serve_bench.py drives `zambac-run serve` with 1 and then
#      16 concurrent streaming clients through the `openai` package: output tokens/s, time
#      to first token and inter-token latency percentiles.
#
#   bench/serve.sh [config-name ...]     (default: zamba2-100m zamba2-1.2b)
#
# STATE_DTYPE=bf16 builds the engines with `--state-dtype bf16` (SSM states in bf16, half
# the state bytes a batched step reads and writes); ROUNDS (3) and REQUESTS (2 per client)
# set the lengths.
#
# Installs the `openai` package into a venv of its own (.venv-serve, skipped when present)
# and builds zambac in release. Engines go to target/bench-engines/ (rebuilt each run from
# the compile cache). Results: target/bench-engines/<name>.serve.json.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-serve
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  echo "bench: creating $VENV with openai 2.54.0"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q openai==2.54.0
fi
cargo build --release -q
OUT=target/bench-engines
mkdir -p "$OUT"
ROUNDS=${ROUNDS:-3}
STATE_DTYPE=${STATE_DTYPE:-f32}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs"
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(zamba2-100m zamba2-1.2b)
for n in "${names[@]}"; do
  {
    engine="$OUT/$n-bf16.engine"
    target/release/zambac build "examples/$n.toml" --dtype bf16 --state-dtype "$STATE_DTYPE" \
      -o "$engine" > /dev/null
    echo "== $n (bf16, $STATE_DTYPE SSM states): batched decode, prompt 64, 32 steps, $ROUNDS alternating rounds"
    for r in $(seq "$ROUNDS"); do
      for b in 1 16; do
        target/release/zambac-run bench "$engine" --prompt-len 64 --new-tokens 32 --batch "$b" --json \
          | python3 -c "import json,sys; v=json.load(sys.stdin); print(f\"round $r  batch {v['batch']:>2}: {v['decode_tok_per_s']:8.1f} decode tok/s\")"
      done
    done
    echo "== $n (bf16): the server, 1 then 16 clients"
    "$VENV/bin/python" bench/serve_bench.py --engine "$engine" --clients 1,16 \
      --requests "${REQUESTS:-2}" --prompt-len 64 --max-tokens 64 --json "$OUT/$n.serve.json"
  }
done
