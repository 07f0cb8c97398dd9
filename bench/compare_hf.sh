#!/usr/bin/env bash
# Side-by-side CPU benchmark: zambac engines vs Hugging Face transformers 5.23 (eager,
# float32, 2 threads) on the same configs with random weights, in one run.
#
#   bench/compare_hf.sh [config-name ...]     (default: zamba2-100m zamba2-1.2b)
#
# Installs torch + transformers into a venv of its own (.venv-bench, skipped when
# present), builds zambac in release, then runs bench/compare_hf.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/hf_venv.sh)
cargo build --release -q
exec "$PY" bench/compare_hf.py --zambac target/release/zambac "$@"
