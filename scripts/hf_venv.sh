#!/usr/bin/env bash
# Prints the python of .venv-bench — torch 2.15.0 and transformers 5.23.0 (CPU), safetensors,
# numpy — after creating it, unless it is there and imports them. Used by the scripts that
# run Hugging Face beside zambac (bench/compare_hf.sh, scripts/rope_fixtures.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-bench
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
  echo "creating $VENV with torch 2.15.0 and transformers 5.23.0" >&2
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q torch==2.15.0 transformers==5.23.0 safetensors numpy >&2
fi
echo "$PWD/$VENV/bin/python"
