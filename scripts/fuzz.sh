#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for N seconds (default 30) from its seed
# corpus (copied, so the committed seeds stay as they are). A crash fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-30}
FUZZ_DIR=${FUZZ_BUILD_DIR:-build-fuzz}
if ! command -v clang++ >/dev/null; then
  echo "fuzz.sh: clang++ not found (apt-get install clang)" >&2
  exit 1
fi
CC=clang CXX=clang++ cmake -S . -B "$FUZZ_DIR" -G Ninja -DDETINFER_FUZZ=ON >/dev/null
cmake --build "$FUZZ_DIR" -j "$(nproc)"
for bin in "$FUZZ_DIR"/fuzz/fuzz_*; do
  name=${bin##*/fuzz_}
  work=$(mktemp -d)
  cp -r "fuzz/corpus/$name/." "$work/" 2>/dev/null || true
  echo "fuzz: $name for ${SECONDS_EACH}s"
  # Only the summary and any crash report; pipefail keeps the fuzzer's exit status.
  "$bin" -max_total_time="$SECONDS_EACH" -print_final_stats=0 "$work" 2>&1 |
    { grep -E '^(Done|==[0-9]+==|SUMMARY|.*ERROR)' || true; }
  rm -rf "$work"
done
echo "fuzz: no crash"
