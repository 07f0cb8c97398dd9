#!/usr/bin/env bash
# The device check: runs on a Hopper machine with only an NVIDIA driver, CUDA 13
# libraries and Python with torch and transformers (no Rust, no network), from the bundle
# scripts/gpu-prepare.sh made here. See docs/gpu.md.
#
#   scripts/gpu-check.sh [--backend cuda|cpu] [--dir BUNDLE] [--out DIR] [--quick]
#
# `--backend cpu` is the rehearsal on a machine without a GPU. Exits 1 when a check fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BACKEND=cuda
for a in "$@"; do
    [ "$a" = cpu ] && BACKEND=cpu
done
if [ "$BACKEND" = cuda ]; then
    # cuBLAS may live only inside the Python wheels (nvidia-cublas); the driver library in
    # the system's library path.
    LIBS=$("$PY" - <<'PYEOF'
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "**", "libcublas*.so*"), recursive=True)})
print(":".join(dirs))
PYEOF
)
    export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader || true
fi
exec "$PY" scripts/gpu_check.py "$@"
