#!/usr/bin/env bash
# Installs what zambac needs on Debian 12, skipping what is already there:
#  - LLVM/MLIR 22 (static libraries for melior and inkwell), clang-22 for bindgen, zstd;
#  - OpenBLAS, which the cpu backend loads at run time for its matrix products, and oneDNN
#    (libdnnl2), which it loads for bf16 products on CPUs with AVX-512 BF16;
#  - NVIDIA's PTX assembler and libdevice from PyPI (nvidia-cuda-nvcc), used by the tests
#    to prove generated PTX for sm_90 assembles (no GPU or CUDA driver needed).
set -euo pipefail

apt_pkgs=(llvm-22-dev libmlir-22-dev mlir-22-tools clang-22 libpolly-22-dev libzstd-dev libopenblas-dev libdnnl2)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
else
  echo "setup: LLVM/MLIR 22, OpenBLAS and oneDNN packages present"
fi

if python3 - <<'PY' 2>/dev/null
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("nvidia")
paths = list(spec.submodule_search_locations) if spec else []
ok = any(list(pathlib.Path(p).glob("*/bin/ptxas")) for p in paths)
sys.exit(0 if ok else 1)
PY
then
  echo "setup: ptxas (nvidia-cuda-nvcc) present"
else
  echo "setup: installing nvidia-cuda-nvcc (ptxas, libdevice) from PyPI"
  python3 -m pip install -q nvidia-cuda-nvcc
fi
