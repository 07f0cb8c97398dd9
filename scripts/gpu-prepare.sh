#!/usr/bin/env bash
# Prepares the bundle the device check runs from (default `.gpu-check/`, git-ignored):
# a release `zambac-run` (stripped), fixture engines (f32, bf16 weights, bf16 KV caches)
# with the fixtures' HF logits, random-weight engines of both families, and a
# Zamba2-1.2B-shaped bf16 engine *without* weights.bin (2.4 GB cannot travel: the check
# regenerates it from its seed with `zambac-run materialize`), and its twin with the host's
# Mamba2 forms (sequential prefill scans, the decode step's conv apart from its scan). Host
# code is generated for
# `x86-64-v3` so the cpu backend also runs on the GPU machine's processor.
#
#   scripts/gpu-prepare.sh [BUNDLE]        (about 3 minutes; 20 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.gpu-check}
SHARED=${ZAMBAC_SHARED:-../shared}
cargo build --release -q --bin zambac --bin zambac-run
Z=target/release/zambac
build() { "$Z" build "$@" --target all --cpu x86-64-v3 >/dev/null; }
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/engines" "$OUT/fixtures" "$OUT/configs"
cp target/release/zambac-run "$OUT/bin/"
strip "$OUT/bin/zambac-run"
for f in zamba2-tiny zamba2-tiny-norope-1block zamba1-tiny; do
    build "$SHARED/fixtures/$f" --dtype f32 -o "$OUT/engines/$f.f32"
    build "$SHARED/fixtures/$f" --dtype bf16 -o "$OUT/engines/$f.bf16"
    mkdir -p "$OUT/fixtures/$f"
    cp "$SHARED/fixtures/$f/expected.safetensors" "$SHARED/fixtures/$f/tokens.json" "$OUT/fixtures/$f/"
done
build "$SHARED/fixtures/zamba2-tiny" --dtype f32 --kv-dtype bf16 -o "$OUT/engines/zamba2-tiny.kvbf16"
build examples/tiny.toml --weights random:7 -o "$OUT/engines/random-zamba2.f32"
build examples/tiny.toml --weights random:7 --dtype bf16 --kv-dtype bf16 -o "$OUT/engines/random-zamba2.bf16"
build "$SHARED/fixtures/zamba1-tiny/config.json" --weights random:5 -o "$OUT/engines/random-zamba1.f32"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# The benchmark engine, and its twin with the host's Mamba2 forms (a GPU engine scans a
# prefill in chunks and fuses a decode step's conv into its scan by default), so the device
# measures the two side by side.
for forms in gpu host; do
    name=bench-zamba2-1.2b
    flags=(--mamba2-prefill chunked --mamba2-decode fused)
    if [ "$forms" = host ]; then
        name=bench-zamba2-1.2b-host-forms
        flags=(--mamba2-prefill sequential --mamba2-decode separate)
    fi
    build "$SHARED/configs/zamba2-1.2b" --dtype bf16 --weights random:0 "${flags[@]}" \
        -o "$TMP/$name"
    mkdir -p "$OUT/engines/$name"
    for f in manifest.json host.so kernels.ptx; do
        cp "$TMP/$name/$f" "$OUT/engines/$name/"
    done
done
mkdir -p "$OUT/configs/zamba2-1.2b"
cp "$SHARED/configs/zamba2-1.2b/config.json" "$OUT/configs/zamba2-1.2b/"
du -sh "$OUT"
