#!/usr/bin/env bash
# The CUDA performance run: a Llama-3-8B-shaped model with random bf16 weights (made here by
# scripts/make_random_llama.py, 16 GB), `detinfer bench` with --determinism on and off, and the
# PyTorch + transformers peer (eager, bf16) on the same weights. Needs a GPU with ~40 GB, python3
# with torch, transformers and safetensors.
#   scripts/bench_gpu_llama8b.sh                    # build in build-gpu/, model in /tmp/llama8b
#   MODEL=/data/l8b BATCHES="1 8" PEER=0 OUT=results scripts/bench_gpu_llama8b.sh
# CMAKE_ARGS adds configure arguments (e.g. -DGTest_DIR=... where GoogleTest is not installed).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B="${BUILD_DIR:-$ROOT/build-gpu}"
M="${MODEL:-/tmp/llama8b}"
OUT="${OUT:-$B/bench-llama8b}"
BATCHES="${BATCHES:-1 8 64 256}"
GEN="${GEN:-32}"
mkdir -p "$OUT"
export CUDA_MODULE_LOADING=EAGER
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
cmake -S "$ROOT" -B "$B" -G Ninja -DDETINFER_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  ${CMAKE_ARGS:-} >"$OUT/build.log" 2>&1 && cmake --build "$B" --target detinfer >>"$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; exit 1; }
[ -f "$M/config.json" ] || python3 "$ROOT/scripts/make_random_llama.py" --out "$M" --device cuda || exit 1
for mode in on off; do
  # shellcheck disable=SC2086
  "$B/detinfer" bench -m "$M" --device cuda --determinism $mode -b $BATCHES --prompt-len 128 --gen "$GEN" \
    --prefill-len 4096 --json "$OUT/bench_$mode.json" | tee "$OUT/bench_$mode.log"
done
if [ "${PEER:-1}" = 1 ]; then
  python3 "$ROOT/scripts/bench_torch_peer.py" --model "$M" --batches "$(echo $BATCHES | tr ' ' ,)" --gen "$GEN" \
    --prefill-runs 2 --json "$OUT/peer.json" | tee "$OUT/peer.log"
fi
