// Where the default model lives. Setup (scripts/setup.sh) puts it in
// $DETINFER_HOME/models (default ~/.cache/detinfer/models); the CLI and the tests look there.
#pragma once
#include <cstdint>
#include <string>

namespace detinfer {

inline constexpr const char* kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";
inline constexpr const char* kDefaultModelSha256 =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

std::string detinfer_home();        // $DETINFER_HOME, else $HOME/.cache/detinfer
std::string default_model_path();   // detinfer_home() + "/models/" + kDefaultModelFile
// Resolves -m: empty → the default model; throws Error with the setup command if it is missing.
std::string resolve_model_path(const std::string& arg);

}  // namespace detinfer

namespace detinfer {
// MemAvailable from /proc/meminfo in bytes (-1 if unknown).
int64_t available_memory_bytes();
// Throws Error if `bytes` for `what` exceed the memory available now, saying how much is needed,
// how much is free, and `advice`.
void check_fits_in_memory(int64_t bytes, const std::string& what, const std::string& advice);
}  // namespace detinfer
