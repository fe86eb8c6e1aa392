#include "common/paths.h"

#include <cstdlib>
#include <filesystem>

#include "common/error.h"

namespace detinfer {

std::string detinfer_home() {
  if (const char* h = std::getenv("DETINFER_HOME"); h && *h) return h;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.cache/detinfer";
}

std::string default_model_path() { return detinfer_home() + "/models/" + kDefaultModelFile; }

std::string resolve_model_path(const std::string& arg) {
  namespace fs = std::filesystem;
  if (arg.empty()) {
    std::string p = default_model_path();
    if (!fs::exists(p))
      fail("the default model is not installed (looked for ", p,
           "). Run: bash scripts/setup.sh --model-only   (or pass -m FILE.gguf / -m HF_DIR)");
    return p;
  }
  if (!fs::exists(arg)) fail(arg, ": no such file or directory");
  return arg;
}

}  // namespace detinfer
