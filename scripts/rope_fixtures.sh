#!/usr/bin/env bash
# Regenerates tests/fixtures/rope: Hugging Face transformers 5.23 (float32, eager) on the
# shared zamba2-tiny checkpoint under each scaled `rope_type` (tests/fixtures/rope/make.py).
# Installs torch + transformers into a venv of its own (.venv-bench, skipped when present).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/hf_venv.sh)
exec "$PY" tests/fixtures/rope/make.py
