#!/usr/bin/env bash
# Runs every CPU test: builds (CUDA code too when nvcc is present: compiled, not run), makes sure
# the default model is installed, runs the test suite with ctest, then each fuzzer briefly.
#   bash scripts/test.sh            all of it
#   FUZZ_SECONDS=0 bash scripts/test.sh   skip the fuzzers
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}

bash scripts/setup.sh --no-run --test-deps

export DETINFER_REQUIRE_MODEL=1   # tests that use the default model fail (not skip) without it
(cd "$BUILD_DIR" && ctest --output-on-failure -j "$(nproc)")

if [ "$FUZZ_SECONDS" != 0 ]; then
  bash scripts/fuzz.sh "$FUZZ_SECONDS"
fi
