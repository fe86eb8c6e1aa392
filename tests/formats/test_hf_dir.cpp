// Hugging Face directory access: the committed tiny models (single file and sharded), and
// directories broken one file at a time.
#include "formats/hf_dir.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/half.h"

namespace detinfer {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kModels = std::string(DETINFER_TEST_DATA) + "/models";

// Element i of a float tensor, whatever its storage type (the data may be unaligned).
double element(const TensorView& t, int64_t i) {
  if (t.dtype == DType::F32) {
    float f;
    std::memcpy(&f, t.data + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, t.data + 2 * i, 2);
  return t.dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

int64_t count(const TensorView& t) {
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  return n;
}

double mean(const TensorView& t) {
  double s = 0;
  for (int64_t i = 0; i < count(t); ++i) s += element(t, i);
  return s / count(t);
}

double stddev(const TensorView& t) {
  double m = mean(t), s = 0;
  for (int64_t i = 0; i < count(t); ++i) s += (element(t, i) - m) * (element(t, i) - m);
  return std::sqrt(s / count(t));
}

// The HF tensor names of a tiny model's decoder layers.
std::vector<std::string> layer_names(int layers, bool bias, bool qk_norm) {
  std::vector<std::string> out;
  for (int i = 0; i < layers; ++i) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    for (const char* n : {"input_layernorm.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight",
                          "mlp.up_proj.weight", "mlp.down_proj.weight", "self_attn.q_proj.weight",
                          "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight"})
      out.push_back(p + n);
    if (bias)
      for (const char* n : {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"})
        out.push_back(p + n);
    if (qk_norm)
      for (const char* n : {"self_attn.q_norm.weight", "self_attn.k_norm.weight"}) out.push_back(p + n);
  }
  return out;
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

void expect_shape(const HfDirectory& d, const std::string& name, std::vector<int64_t> shape, DType dtype) {
  const TensorView* t = d.find_tensor(name);
  ASSERT_NE(t, nullptr) << name;
  EXPECT_EQ(t->shape, shape) << name;
  EXPECT_EQ(t->dtype, dtype) << name;
  EXPECT_EQ(t->name, name);
}

// Norm gains are 1 + 0.1 N(0,1), weights zero-mean: wrong offsets or decoding would not pass.
void expect_plausible_values(const HfDirectory& d) {
  for (const std::string& n : d.tensor_names()) {
    const TensorView& t = d.tensor(n);
    double m = mean(t), s = stddev(t);
    if (n.find("norm") != std::string::npos) {
      EXPECT_NEAR(m, 1.0, 0.1) << n;
      EXPECT_GT(s, 0.03) << n;
      EXPECT_LT(s, 0.2) << n;
    } else {
      EXPECT_NEAR(m, 0.0, 0.05) << n;
      EXPECT_GT(s, 0.02) << n;
      EXPECT_LT(s, 0.15) << n;
    }
  }
}

TEST(HfDirectory, LlamaSingleFile) {
  HfDirectory d(kModels + "/llama");
  EXPECT_EQ(d.path(), kModels + "/llama");
  EXPECT_EQ(d.config().at("model_type"), "llama");
  EXPECT_EQ(d.config().at("hidden_size"), 64);
  EXPECT_EQ(d.config().at("rope_scaling").at("rope_type"), "llama3");
  ASSERT_EQ(d.weight_files().size(), 1u);
  EXPECT_EQ(fs::path(d.weight_files()[0]).filename(), "model.safetensors");

  std::vector<std::string> want = layer_names(2, false, false);
  for (const char* n : {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}) want.push_back(n);
  EXPECT_EQ(d.tensor_names(), sorted(want));

  int vocab = d.config().at("vocab_size");
  expect_shape(d, "model.embed_tokens.weight", {vocab, 64}, DType::F32);
  expect_shape(d, "lm_head.weight", {vocab, 64}, DType::F32);
  expect_shape(d, "model.layers.1.self_attn.q_proj.weight", {64, 64}, DType::F32);
  expect_shape(d, "model.layers.1.self_attn.k_proj.weight", {32, 64}, DType::F32);
  expect_shape(d, "model.layers.0.self_attn.o_proj.weight", {64, 64}, DType::F32);
  expect_shape(d, "model.layers.0.mlp.down_proj.weight", {64, 128}, DType::F32);
  expect_shape(d, "model.norm.weight", {64}, DType::F32);
  expect_plausible_values(d);

  EXPECT_EQ(d.find_tensor("model.layers.2.mlp.up_proj.weight"), nullptr);
  EXPECT_EQ(fs::path(d.tokenizer_json_path()).filename(), "tokenizer.json");
  EXPECT_EQ(fs::path(d.tokenizer_config_path()).filename(), "tokenizer_config.json");
  EXPECT_TRUE(fs::is_regular_file(d.tokenizer_json_path()));
  EXPECT_TRUE(fs::is_regular_file(d.tokenizer_config_path()));
}

TEST(HfDirectory, ShardedBf16) {
  HfDirectory d(kModels + "/llama_tied_bf16");
  EXPECT_EQ(d.config().at("tie_word_embeddings"), true);
  ASSERT_EQ(d.weight_files().size(), 2u);
  EXPECT_EQ(fs::path(d.weight_files()[0]).filename(), "model-00001-of-00002.safetensors");
  EXPECT_EQ(fs::path(d.weight_files()[1]).filename(), "model-00002-of-00002.safetensors");

  // Every tensor of the index, no lm_head (tied), each resolved in its own shard.
  std::vector<std::string> want = layer_names(2, false, false);
  for (const char* n : {"model.embed_tokens.weight", "model.norm.weight"}) want.push_back(n);
  EXPECT_EQ(d.tensor_names(), sorted(want));
  std::ifstream f(kModels + "/llama_tied_bf16/model.safetensors.index.json");
  json index = json::parse(f);
  std::vector<std::string> shards_used;
  for (auto& [name, shard] : index.at("weight_map").items()) {
    const TensorView* t = d.find_tensor(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->dtype, DType::BF16);
    shards_used.push_back(shard);
  }
  std::sort(shards_used.begin(), shards_used.end());
  shards_used.erase(std::unique(shards_used.begin(), shards_used.end()), shards_used.end());
  EXPECT_EQ(shards_used.size(), 2u);
  expect_shape(d, "model.embed_tokens.weight", {d.config().at("vocab_size").get<int64_t>(), 64}, DType::BF16);
  expect_plausible_values(d);
}

TEST(HfDirectory, Qwen2AndQwen3) {
  HfDirectory q2(kModels + "/qwen2");
  EXPECT_EQ(q2.config().at("model_type"), "qwen2");
  std::vector<std::string> want = layer_names(2, true, false);
  for (const char* n : {"model.embed_tokens.weight", "model.norm.weight"}) want.push_back(n);
  EXPECT_EQ(q2.tensor_names(), sorted(want));
  expect_shape(q2, "model.layers.0.self_attn.q_proj.bias", {64}, DType::F32);
  expect_shape(q2, "model.layers.0.self_attn.v_proj.bias", {32}, DType::F32);
  expect_plausible_values(q2);

  HfDirectory q3(kModels + "/qwen3");
  EXPECT_EQ(q3.config().at("model_type"), "qwen3");
  want = layer_names(2, false, true);
  for (const char* n : {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}) want.push_back(n);
  EXPECT_EQ(q3.tensor_names(), sorted(want));
  expect_shape(q3, "model.layers.1.self_attn.k_norm.weight", {16}, DType::F16);
  expect_plausible_values(q3);
}

// ---- broken directories ----

// A scratch directory, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = fs::temp_directory_path() /
           ("detinfer_hf_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  void write(const std::string& name, const std::string& content) const {
    std::ofstream(path / name, std::ios::binary) << content;
  }
  std::string str() const { return path.string(); }
};

// One F32 tensor per name, each of 2 elements.
std::string safetensors_bytes(std::initializer_list<const char*> names) {
  json h = json::object();
  std::string data;
  for (const char* n : names) {
    h[n] = {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {data.size(), data.size() + 8}}};
    float v[2] = {0.5f, -0.5f};
    data.append(reinterpret_cast<const char*>(v), 8);
  }
  std::string hs = h.dump();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((hs.size() >> (8 * i)) & 0xff);
  return out + hs + data;
}

void expect_error(const std::string& dir, std::initializer_list<std::string> fragments) {
  try {
    HfDirectory d(dir);
    ADD_FAILURE() << "no error for " << dir;
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const std::string& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "missing '" << f << "' in: " << msg;
  }
}

TEST(HfDirectoryErrors, NotADirectory) {
  TempDir t;
  expect_error(t.str() + "/absent", {t.str() + "/absent", "not a directory"});
  t.write("file", "x");
  expect_error(t.str() + "/file", {"not a directory"});
}

TEST(HfDirectoryErrors, MissingConfig) {
  TempDir t;
  t.write("model.safetensors", safetensors_bytes({"a"}));
  expect_error(t.str(), {t.str(), "config.json is missing"});
}

TEST(HfDirectoryErrors, BadConfig) {
  TempDir t;
  t.write("model.safetensors", safetensors_bytes({"a"}));
  t.write("config.json", "{\"hidden_size\": 64,");
  expect_error(t.str(), {"config.json", "not valid JSON"});
  t.write("config.json", "[1, 2]");
  expect_error(t.str(), {"config.json", "expected an object"});
  t.write("config.json", "");
  expect_error(t.str(), {"config.json", "not valid JSON"});
  t.write("config.json", std::string(1 << 20, '['));
  expect_error(t.str(), {"config.json", "nests deeper"});
}

TEST(HfDirectoryErrors, MissingWeights) {
  TempDir t;
  t.write("config.json", "{}");
  expect_error(t.str(), {t.str(), "no weights", "model.safetensors", "model.safetensors.index.json"});
  t.write("pytorch_model.bin", "not supported");
  expect_error(t.str(), {"no weights", "PyTorch"});
}

TEST(HfDirectoryErrors, CorruptWeights) {
  TempDir t;
  t.write("config.json", "{}");
  t.write("model.safetensors", "short");
  expect_error(t.str(), {(t.path / "model.safetensors").string(), "shorter"});
}

TEST(HfDirectoryErrors, MissingShard) {
  TempDir t;
  fs::copy(kModels + "/llama_tied_bf16", t.path, fs::copy_options::recursive);
  fs::remove(t.path / "model-00002-of-00002.safetensors");
  expect_error(t.str(), {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing"});
}

TEST(HfDirectoryErrors, TensorAbsentFromShard) {
  TempDir t;
  t.write("config.json", "{}");
  t.write("a.safetensors", safetensors_bytes({"x", "y"}));
  t.write("b.safetensors", safetensors_bytes({"z"}));
  json index = {{"metadata", {{"total_size", 24}}},
                {"weight_map", {{"x", "a.safetensors"}, {"y", "a.safetensors"}, {"w", "b.safetensors"}}}};
  t.write("model.safetensors.index.json", index.dump());
  expect_error(t.str(), {"model.safetensors.index.json", "'w'", "b.safetensors", "does not contain"});

  // Fixed, it opens; each shard is mapped once, in name order.
  index["weight_map"].erase("w");
  index["weight_map"]["z"] = "b.safetensors";
  t.write("model.safetensors.index.json", index.dump());
  HfDirectory d(t.str());
  EXPECT_EQ(d.tensor_names(), (std::vector<std::string>{"x", "y", "z"}));
  ASSERT_EQ(d.weight_files().size(), 2u);
  EXPECT_EQ(fs::path(d.weight_files()[0]).filename(), "a.safetensors");
  EXPECT_EQ(d.tokenizer_json_path(), "");
  EXPECT_EQ(d.tokenizer_config_path(), "");
  EXPECT_THROW(d.tensor("w"), Error);
  try {
    d.tensor("w");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
  }
}

TEST(HfDirectoryErrors, BadIndex) {
  TempDir t;
  t.write("config.json", "{}");
  t.write("a.safetensors", safetensors_bytes({"x"}));
  t.write("model.safetensors.index.json", R"({"metadata": {}})");
  expect_error(t.str(), {"model.safetensors.index.json", "weight_map"});
  t.write("model.safetensors.index.json", R"({"weight_map": []})");
  expect_error(t.str(), {"weight_map", "expected an object"});
  t.write("model.safetensors.index.json", R"({"weight_map": {"x": 3}})");
  expect_error(t.str(), {"'x'", "expected a file name"});
  t.write("model.safetensors.index.json", R"({"weight_map": {}})");
  expect_error(t.str(), {"lists no tensors"});
  t.write("model.safetensors.index.json", "{\"weight_map\": ");
  expect_error(t.str(), {"model.safetensors.index.json", "not valid JSON"});
  // Shards must be files of the directory itself.
  for (const char* bad : {"../a.safetensors", "/etc/passwd", "sub/a.safetensors", "..", ""}) {
    t.write("model.safetensors.index.json", json({{"weight_map", {{"x", bad}}}}).dump());
    expect_error(t.str(), {"'x'", "not a file name"});
  }
}

TEST(HfDirectoryErrors, SingleFileWinsOverIndex) {
  TempDir t;
  t.write("config.json", R"({"model_type": "llama"})");
  t.write("model.safetensors", safetensors_bytes({"single"}));
  t.write("model.safetensors.index.json", R"({"weight_map": {"x": "gone.safetensors"}})");
  HfDirectory d(t.str());
  EXPECT_EQ(d.tensor_names(), std::vector<std::string>{"single"});
  EXPECT_EQ(d.config().at("model_type"), "llama");
  t.write("tokenizer.json", "{}");
  HfDirectory d2(t.str());
  EXPECT_EQ(d2.tokenizer_json_path(), (t.path / "tokenizer.json").string());
  EXPECT_EQ(d2.tokenizer_config_path(), "");
}

}  // namespace
}  // namespace detinfer
