#!/usr/bin/env bash
# Builds detinfer with CUDA and runs the GPU tests and checks. For anyone with a GPU:
#   scripts/gpu_test.sh                      # build in build-gpu/, run every step
#   ONLY=allreduce scripts/gpu_test.sh       # only the steps whose name contains "allreduce"
#   BUILD_DIR=/tmp/b LOG_DIR=/tmp/logs BENCH=1 scripts/gpu_test.sh
# TARGETS lists what the build step builds (add your binaries); STEP_TIMEOUT bounds each step.
# Each check is one `step NAME COMMAND...` line in the list at the end: add yours there. Every
# step runs (a failure does not stop the others), logs to $LOG_DIR/NAME.log, and the script ends
# with a summary and a nonzero exit code if any step failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-gpu}"
LOG_DIR="${LOG_DIR:-$BUILD_DIR/gpu-logs}"
CMAKE="${CMAKE:-cmake}"
JOBS="${JOBS:-$(nproc)}"
STEP_TIMEOUT="${STEP_TIMEOUT:-600}"
TARGETS="${TARGETS:-test_cuda bench_allreduce bench_attention bench_gemm bench_sampler detinfer}"
# Extra configure arguments, e.g. -DGTest_DIR=... where GoogleTest is not installed system-wide.
CMAKE_ARGS="${CMAKE_ARGS:-}"
# NVLink multicast (NCCL's NVLS) stays off everywhere: on shared hosts it can take the GPUs down.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# Kernels load at start, not lazily inside another kernel's lifetime.
export CUDA_MODULE_LOADING="${CUDA_MODULE_LOADING:-EAGER}"
mkdir -p "$LOG_DIR"

RESULTS=()
FAILED=0
step() {
  local name=$1
  shift
  if [[ -n "${ONLY:-}" && "$name" != *"$ONLY"* && "$name" != build ]]; then return 0; fi
  echo "=== $name: $*"
  local t0=$SECONDS rc=0
  # bash -c: a step may be a shell function (they are exported below).
  timeout --signal=TERM --kill-after=10 "$STEP_TIMEOUT" bash -c '"$@"' step "$@" >"$LOG_DIR/$name.log" 2>&1 || rc=$?
  local res=PASS
  if [[ $rc -ne 0 ]]; then
    res="FAIL(rc=$rc)"
    FAILED=1
  fi
  RESULTS+=("$(printf '%-14s %-40s %5ss' "$res" "$name" $((SECONDS - t0)))")
  tail -n 4 "$LOG_DIR/$name.log" | sed 's/^/    /'
  return $rc
}

# Starts one process per rank as torchrun does (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
# MASTER_PORT on loopback) and waits for all; output is each rank's, prefixed.
#   launch_ranks WORLD COMMAND...        ranks on GPUs LOCAL_RANK mod #GPUs
# With VIRTUAL_HOSTS=1 every process gets its own NCCL_HOSTID, so NCCL accepts several ranks per
# GPU (it then talks over loopback sockets: slow, but it runs the real NCCL algorithms).
launch_ranks() {
  local world=$1
  shift
  local port=$((20000 + RANDOM % 20000)) pids=() rc=0 r
  local tmp
  tmp=$(mktemp -d)
  for ((r = 0; r < world; r++)); do
    if [[ "${VIRTUAL_HOSTS:-0}" == 1 ]]; then
      env RANK=$r WORLD_SIZE=$world LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
        NCCL_HOSTID="detinfer-vrank-$r" NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 "$@" >"$tmp/$r.log" 2>&1 &
    else
      env RANK=$r WORLD_SIZE=$world LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$@" >"$tmp/$r.log" 2>&1 &
    fi
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  for ((r = 0; r < world; r++)); do sed "s/^/[rank $r] /" "$tmp/$r.log"; done
  rm -rf "$tmp"
  return $rc
}

# Runs a multi-process step under compute-sanitizer TOOL (each rank in its own sanitizer). NCCL
# stays off (DETINFER_AR_NCCL=0): its own kernels trip synccheck and its probing trips memcheck,
# which says nothing about ours.
sanitize_ranks() {
  local tool=$1 world=$2
  shift 2
  DETINFER_AR_NCCL=0 DETINFER_AR_LL_BYTES="${SANITIZE_LL_BYTES:-256}" \
    DETINFER_AR_TEST_MAX_ELEMS="${SANITIZE_MAX_ELEMS:-5000}" launch_ranks "$world" \
    compute-sanitizer --tool "$tool" --error-exitcode 3 "$@"
}

# Virtual ranks for NCCL: several processes per GPU, each its own NCCL "host".
mp_virtual() {
  VIRTUAL_HOSTS=1 DETINFER_AR_TEST_MAX_ELEMS="${VIRTUAL_MAX_ELEMS:-1100000}" launch_ranks "$@"
}

build() {
  "$CMAKE" -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DDETINFER_CUDA=ON -DCMAKE_BUILD_TYPE=Release $CMAKE_ARGS &&
    "$CMAKE" --build "$BUILD_DIR" -j "$JOBS" --target $TARGETS
}

export ROOT BUILD_DIR CMAKE JOBS TARGETS CMAKE_ARGS
export -f launch_ranks sanitize_ranks mp_virtual build

NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
echo "GPUs: $NGPU; logs in $LOG_DIR"
step build build || {
  printf '%s\n' "${RESULTS[@]}"
  exit 1
}
T="$BUILD_DIR/tests/test_cuda"
B="$BUILD_DIR/bench/bench_allreduce"

# ---- steps (append yours) -------------------------------------------------------------------
step test_cuda "$T"
# CUDA backend: memcheck on the kernel tests (the large sweeps and verify cases are left out for
# time), then the determinism cases end to end through the CLI on a small model.
step cuda-ops-memcheck compute-sanitizer --tool memcheck --error-exitcode 3 "$T" \
  --gtest_filter='*CudaOps*:-*VerifyCases*:*N49152*:*N1536*'
step cli-verify-cuda "$BUILD_DIR/detinfer" verify --device cuda --quick -m "$ROOT/tests/data/models/llama"
# The GEMMs' mbarrier pipelines (both kernels, one and four K tiles per stage): racecheck and
# synccheck on bench_gemm's sanitizer shapes, whose checks must pass too.
step gemm-racecheck compute-sanitizer --tool racecheck --error-exitcode 3 "$BUILD_DIR/bench/bench_gemm" --sanitize
step gemm-synccheck compute-sanitizer --tool synccheck --error-exitcode 3 "$BUILD_DIR/bench/bench_gemm" --sanitize
# Attention and the sampler: sanitizers on their kernel tests (the tests themselves ran above).
step attention-racecheck compute-sanitizer --tool racecheck --error-exitcode 3 "$T" \
  --gtest_filter='*AttentionKernel.MatchesFp64*:AttentionKernelWide.ShortDecode'
step attention-synccheck compute-sanitizer --tool synccheck --error-exitcode 3 "$T" \
  --gtest_filter='*AttentionKernel.MatchesFp64*:AttentionKernelWide.ShortDecode'
step sampler-memcheck compute-sanitizer --tool memcheck --error-exitcode 3 "$T" \
  --gtest_filter='*SamplerGpu*:-*Many*:*Long*'
# CUDA graphs on and off through the CLI: the same digest.
step cli-graphs-off bash -c "a=\$(DETINFER_CUDA_GRAPHS=0 '$BUILD_DIR/detinfer' verify --child-digest --device cuda -m '$ROOT/tests/data/models/llama'); b=\$('$BUILD_DIR/detinfer' verify --child-digest --device cuda -m '$ROOT/tests/data/models/llama'); echo \"graphs off \$a, on \$b\"; [ \"\$a\" = \"\$b\" ]"
# Programmatic dependent launch of the GEMMs off and on through the CLI: the same digest.
step cli-pdl-off bash -c "a=\$(DETINFER_PDL=0 '$BUILD_DIR/detinfer' verify --child-digest --device cuda -m '$ROOT/tests/data/models/llama'); b=\$('$BUILD_DIR/detinfer' verify --child-digest --device cuda -m '$ROOT/tests/data/models/llama'); echo \"pdl off \$a, on \$b\"; [ \"\$a\" = \"\$b\" ]"
# SwiGLU in the gate/up GEMM's epilogue off and on through the CLI: the same digest.
step cli-swiglu-unfused bash -c "a=\$(DETINFER_FUSE_SWIGLU=0 '$BUILD_DIR/detinfer' verify --child-digest --device cuda -m '$ROOT/tests/data/models/llama'); b=\$('$BUILD_DIR/detinfer' verify --child-digest --device cuda -m '$ROOT/tests/data/models/llama'); echo \"swiglu unfused \$a, fused \$b\"; [ \"\$a\" = \"\$b\" ]"
# All-reduce: one process per rank over CUDA IPC (real GPUs), then NCCL at world sizes 3, 4, 8
# with virtual ranks (several processes per GPU), then the sanitizers on the P2P kernels.
step allreduce-mp-world2 launch_ranks 2 "$T" --gtest_filter='AllreduceMultiProcess.*'
for w in 3 4 8; do
  step allreduce-mp-virtual-world$w mp_virtual $w "$T" --gtest_filter='AllreduceMultiProcess.*'
done
step allreduce-racecheck sanitize_ranks racecheck 2 "$T" --gtest_filter='AllreduceMultiProcess.T8*'
step allreduce-synccheck sanitize_ranks synccheck 2 "$T" --gtest_filter='AllreduceMultiProcess.T8*'
step allreduce-memcheck sanitize_ranks memcheck 2 "$T" --gtest_filter='AllreduceMultiProcess.T8*'
if [[ "${BENCH:-0}" == 1 ]]; then
  step attention-bench "$BUILD_DIR/bench/bench_attention"
  step sampler-bench "$BUILD_DIR/bench/bench_sampler"
  step allreduce-bench "$B" --json "$LOG_DIR/allreduce_bench.json"
  step allreduce-plot python3 "$ROOT/scripts/plot_allreduce.py" "$LOG_DIR/allreduce_bench.json" "$LOG_DIR/allreduce_bench.png"
fi
# ---- end of steps ---------------------------------------------------------------------------

echo
echo "=== summary (logs in $LOG_DIR)"
printf '%s\n' "${RESULTS[@]}"
exit $FAILED
