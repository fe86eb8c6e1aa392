#include "common/paths.h"

#include <cstdio>
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

namespace detinfer {

int64_t available_memory_bytes() {
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return -1;
  char line[256];
  int64_t kb = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "MemAvailable: %lld kB", reinterpret_cast<long long*>(&kb)) == 1) break;
  std::fclose(f);
  return kb < 0 ? -1 : kb * 1024;
}

void check_fits_in_memory(int64_t bytes, const std::string& what, const std::string& advice) {
  const int64_t avail = available_memory_bytes();
  if (avail >= 0 && bytes > avail)
    fail(what, " needs ", bytes >> 20, " MiB but only ", avail >> 20, " MiB of memory is available; ", advice);
}

}  // namespace detinfer
