// File access for a Hugging Face model directory: config.json, the safetensors weights (one
// model.safetensors, or shards listed by model.safetensors.index.json) and the tokenizer files.
// It does not interpret the config or the tensor names; the model loader does.
#pragma once
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "formats/safetensors.h"
#include "model/tensor.h"

namespace detinfer {

class HfDirectory {
 public:
  // Throws Error naming the missing or malformed file. Weights are found in this order, as
  // transformers does: model.safetensors, then model.safetensors.index.json.
  explicit HfDirectory(const std::string& dir);

  HfDirectory(HfDirectory&&) noexcept = default;
  HfDirectory& operator=(HfDirectory&&) noexcept = default;

  const std::string& path() const { return dir_; }
  const nlohmann::json& config() const { return config_; }

  // nullptr if no weight file holds that name.
  const TensorView* find_tensor(std::string_view name) const;
  // Like find_tensor, but throws Error naming the directory when absent.
  const TensorView& tensor(std::string_view name) const;
  // Every tensor name, sorted.
  std::vector<std::string> tensor_names() const;
  // The weight files, each mapped once (one file, or the shards in name order).
  const std::vector<std::string>& weight_files() const { return weight_files_; }

  // Full paths; empty when the file is not in the directory.
  const std::string& tokenizer_json_path() const { return tokenizer_json_; }
  const std::string& tokenizer_config_path() const { return tokenizer_config_; }

 private:
  std::string dir_;
  nlohmann::json config_;
  std::vector<std::string> weight_files_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*, std::less<>> tensors_;
  std::string tokenizer_json_, tokenizer_config_;
};

}  // namespace detinfer
