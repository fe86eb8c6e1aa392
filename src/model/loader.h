// Opens a model: a GGUF file or a Hugging Face directory, into the typed description
// (ModelConfig + ModelWeights by role) and a tokenizer description. Unknown architectures are
// refused by name; missing or mis-shaped tensors are errors naming the file.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace detinfer {

namespace gguf {
class File;
}
class HfDirectory;

struct LoadedModel {
  std::string path;
  std::string format;  // "gguf" or "hf"
  ModelConfig config;
  ModelWeights weights;
  TokenizerSpec tokenizer;
  std::string tokenizer_kind;  // e.g. "byte-level BPE (gguf: smollm)"
  std::unique_ptr<gguf::File> gguf;
  std::unique_ptr<HfDirectory> hf;
  std::vector<std::vector<uint8_t>> owned;  // tensors the loader rewrote (GGUF Q/K rows)

  LoadedModel();
  ~LoadedModel();
  LoadedModel(LoadedModel&&) noexcept;
  LoadedModel& operator=(LoadedModel&&) noexcept;

  int64_t weight_bytes() const;  // bytes of all weights as stored
};

// progress(done, total) is called while the weights are read once from disk (page-in), so a
// large model shows progress and the first step is not slowed by page faults.
LoadedModel load_model(const std::string& path,
                       const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace detinfer
