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
VENV=.venv-bench
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers" 2>/dev/null; then
  echo "bench: creating $VENV with torch 2.15.0 and transformers 5.23.0"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.15.0 transformers==5.23.0 safetensors numpy
fi
cargo build --release -q
exec "$VENV/bin/python" bench/compare_hf.py --zambac target/release/zambac "$@"
