#!/usr/bin/env bash
# The main job on the default model: describe it, generate a reply to a sample prompt, and show
# that the reply is reproducible (the same request among other requests gives the same bits).
set -euo pipefail
BIN=${1:-build/detinfer}
"$BIN" info
echo
"$BIN" run "What is the capital of France? Answer in one sentence." --max-tokens 48 --seed 42 --check-batch 7
