#include "formats/hf_dir.h"

#include <filesystem>
#include <utility>

#include "common/error.h"
#include "common/mapped_file.h"

namespace detinfer {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// Small JSON files (config, index) are mapped and parsed whole; the size cap keeps a wrong file
// (or a device node) from being slurped.
json read_json_file(const fs::path& p) {
  constexpr size_t kMaxJsonBytes = 64u << 20;
  MappedFile f(p.string());
  DETINFER_CHECK(f.size() <= kMaxJsonBytes, p.string(), ": ", f.size(), " bytes is too large for a JSON file");
  const uint8_t* begin = f.data();
  // A depth limit keeps "[[[[..." from building a huge tree; real configs nest a few levels.
  constexpr int kMaxDepth = 64;
  auto limit_depth = [&](int depth, json::parse_event_t, json&) {
    DETINFER_CHECK(depth <= kMaxDepth, p.string(), ": JSON nests deeper than ", kMaxDepth, " levels");
    return true;
  };
  try {
    json j = json::parse(begin, begin + f.size(), limit_depth);
    DETINFER_CHECK(j.is_object(), p.string(), ": top level is a JSON ", j.type_name(), ", expected an object");
    return j;
  } catch (const json::parse_error& e) {
    fail(p.string(), ": not valid JSON (near byte ", e.byte, "): ", e.what());
  } catch (const json::exception& e) {  // e.g. a number too large for a double
    fail(p.string(), ": not valid JSON: ", e.what());
  }
}

}  // namespace

HfDirectory::HfDirectory(const std::string& dir) : dir_(dir) {
  const fs::path root(dir);
  std::error_code ec;
  DETINFER_CHECK(fs::is_directory(root, ec), dir, ": not a directory (expected a Hugging Face model directory)");

  const fs::path config_path = root / "config.json";
  DETINFER_CHECK(is_file(config_path), dir, ": config.json is missing (not a Hugging Face model directory?)");
  config_ = read_json_file(config_path);

  const fs::path single = root / "model.safetensors";
  const fs::path index_path = root / "model.safetensors.index.json";
  if (is_file(single)) {
    weight_files_.push_back(single.string());
    files_.push_back(std::make_unique<SafetensorsFile>(single.string()));
    for (const TensorView& t : files_.back()->tensors()) tensors_.emplace(t.name, &t);
  } else if (is_file(index_path)) {
    const std::string ip = index_path.string();
    json index = read_json_file(index_path);
    auto wm = index.find("weight_map");
    DETINFER_CHECK(wm != index.end(), ip, ": no \"weight_map\"");
    DETINFER_CHECK(wm->is_object(), ip, ": \"weight_map\" is a JSON ", wm->type_name(), ", expected an object");

    // Each shard is mapped once, in name order; then every listed tensor is resolved in its shard.
    std::map<std::string, std::string> first_listed;  // shard -> a tensor listed in it (for errors)
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      DETINFER_CHECK(it.value().is_string(), ip, ": weight_map entry for '", it.key(), "' is a ",
                     it.value().type_name(), ", expected a file name");
      const std::string& shard = it.value().get_ref<const std::string&>();
      // Shards live in the directory itself; a path here could point anywhere on the machine.
      DETINFER_CHECK(!shard.empty() && shard != "." && shard != ".." && shard.find('/') == std::string::npos &&
                         shard.find('\\') == std::string::npos,
                     ip, ": weight_map entry for '", it.key(), "' names '", shard, "', which is not a file name");
      first_listed.emplace(shard, it.key());
    }
    std::map<std::string, const SafetensorsFile*> shards;
    for (const auto& [shard, tensor_name] : first_listed) {
      const fs::path shard_path = root / shard;
      DETINFER_CHECK(is_file(shard_path), ip, ": shard ", shard, " (listed for tensor '", tensor_name,
                     "') is missing: no file ", shard_path.string());
      weight_files_.push_back(shard_path.string());
      files_.push_back(std::make_unique<SafetensorsFile>(shard_path.string()));
      shards.emplace(shard, files_.back().get());
    }
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      const std::string& shard = it.value().get_ref<const std::string&>();
      const SafetensorsFile* file = shards.at(shard);
      const TensorView* t = file->find_tensor(it.key());
      DETINFER_CHECK(t != nullptr, ip, ": tensor '", it.key(), "' is listed in shard ", shard, " but ",
                     file->source(), " does not contain it");
      tensors_.emplace(it.key(), t);
    }
    DETINFER_CHECK(!tensors_.empty(), ip, ": \"weight_map\" lists no tensors");
  } else {
    const bool has_bin = is_file(root / "pytorch_model.bin") || is_file(root / "pytorch_model.bin.index.json");
    fail(dir, ": no weights: neither model.safetensors nor model.safetensors.index.json is present",
         has_bin ? " (PyTorch .bin weights are not supported; convert them to safetensors)" : "");
  }

  if (is_file(root / "tokenizer.json")) tokenizer_json_ = (root / "tokenizer.json").string();
  if (is_file(root / "tokenizer_config.json")) tokenizer_config_ = (root / "tokenizer_config.json").string();
}

const TensorView* HfDirectory::find_tensor(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second;
}

const TensorView& HfDirectory::tensor(std::string_view name) const {
  const TensorView* t = find_tensor(name);
  DETINFER_CHECK(t != nullptr, dir_, ": no tensor named '", name, "' in the weights");
  return *t;
}

std::vector<std::string> HfDirectory::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& kv : tensors_) names.push_back(kv.first);
  return names;
}

}  // namespace detinfer
