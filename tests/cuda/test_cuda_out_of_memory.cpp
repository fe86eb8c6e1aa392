// Out of GPU memory: a clear Error that says what needed how much and what to change, never a
// crash, and the CudaOps object stays usable: once memory is back, it gives the bits of a fresh
// object, op by op, recorded and replayed. (The suite's name keeps it out of the memcheck step of
// scripts/gpu_test.sh, whose allocator bookkeeping would not let a test take all the memory.)
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "cuda_ops_test_util.h"
#include "model/llama.h"
#include "model/loader.h"
#include "support/engine_util.h"

using namespace detinfer;
using namespace detinfer::test;

namespace {

KvCacheShape cache_for(const ModelConfig& c, int64_t blocks) {
  KvCacheShape kv;
  kv.n_layers = c.n_layers;
  kv.num_blocks = blocks;
  kv.block_size = 16;
  kv.n_kv_heads = c.n_kv_heads;
  kv.head_dim = c.head_dim;
  kv.value_bytes = 2;
  return kv;
}

// One prefill of `prompt` (one sequence, blocks 0, 1, ...): the logits of every position.
std::vector<float> prefill_logits(CudaOps& ops, const LoadedModel& m, const std::vector<int32_t>& prompt) {
  StepBatch b;
  const int64_t n = static_cast<int64_t>(prompt.size());
  std::vector<int32_t> table;
  for (int64_t i = 0; i * 16 < n; ++i) table.push_back(static_cast<int32_t>(i));
  for (int64_t i = 0; i < n; ++i) {
    b.tokens.push_back(prompt[i]);
    b.pos.push_back(static_cast<int32_t>(i));
    b.seq.push_back(0);
    b.logit_tokens.push_back(static_cast<int32_t>(i));
  }
  b.block_tables = {table};
  std::vector<float> logits(static_cast<size_t>(n * m.config.vocab_size));
  llama_forward(ops, m.config, m.weights, b, logits.data());
  return logits;
}

// The reference: the same prefill on a CudaOps made for it.
std::vector<float> fresh_logits(const LoadedModel& m, const KvCacheShape& kv, const std::vector<int32_t>& prompt) {
  CudaOps fresh(0);
  fresh.init(m.config, kv);
  return prefill_logits(fresh, m, prompt);
}

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  const int64_t d = cuda_ops_test::first_bit_difference(a.data(), b.data(), static_cast<int64_t>(a.size()));
  EXPECT_EQ(d, -1) << what << ": first different logit at " << d;
}

void expect_clear_message(const std::string& msg) {
  for (const char* part : {"out of GPU memory", "needs", "GiB", "--kv-mb"})
    EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' missing from: " << msg;
}

// Takes (nearly) all free device memory until it goes out of scope: the largest blocks first,
// then halving down to 256 bytes, so that even small allocations find nothing.
struct MemoryHog {
  std::vector<void*> blocks;
  MemoryHog() {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return;
    size_t chunk = free_b;
    for (int tries = 0; chunk >= 256 && tries < 100000; ++tries) {
      void* p = nullptr;
      if (cudaMalloc(&p, chunk) == cudaSuccess) {
        blocks.push_back(p);
      } else {
        cudaGetLastError();
        chunk /= 2;
      }
    }
  }
  ~MemoryHog() {
    for (void* p : blocks) cudaFree(p);
  }
};

TEST(CudaOutOfMemory, KvCacheLargerThanTheGpuIsAClearErrorAndTheObjectStaysUsable) {
  CUDA_OPS_REQUIRE_GPU();
  const LoadedModel m = load_model(model_path("llama"));
  const ModelConfig& c = m.config;
  const std::vector<int32_t> prompt = random_prompt(40, c.vocab_size, 5);
  const KvCacheShape small = cache_for(c, 4);

  const std::vector<float> ref = fresh_logits(m, small, prompt);

  CudaOps gpu(0);
  gpu.init(c, small);
  expect_same_bits(prefill_logits(gpu, m, prompt), ref, "before");
  int64_t free_b = 0, total_b = 0;
  gpu.memory_info(&free_b, &total_b);
  KvCacheShape huge = small;
  huge.num_blocks = 2 * total_b / (small.bytes() / small.num_blocks) + 1;  // twice the GPU
  try {
    gpu.init(c, huge);
    ADD_FAILURE() << "a KV cache of " << huge.bytes() << " bytes did not fail";
  } catch (const Error& e) {
    expect_clear_message(e.what());
    EXPECT_NE(std::string(e.what()).find("the K cache"), std::string::npos) << e.what();
  }
  // The old cache is gone: a step is refused until init succeeds, not run on freed memory.
  EXPECT_THROW(prefill_logits(gpu, m, prompt), Error);
  gpu.init(c, small);
  expect_same_bits(prefill_logits(gpu, m, prompt), ref, "after init again");
  gpu.synchronize();
}

TEST(CudaOutOfMemory, WeightsThatDoNotFitAreAClearErrorAndTheStepRunsOnceMemoryIsBack) {
  CUDA_OPS_REQUIRE_GPU();
  // The same model loaded twice: the same configuration (so the same buffers), other weights to
  // upload (they are keyed by their host address).
  const LoadedModel a = load_model(model_path("llama"));
  const LoadedModel b = load_model(model_path("llama"));
  const ModelConfig& c = a.config;
  const std::vector<int32_t> prompt = random_prompt(24, c.vocab_size, 6);
  const KvCacheShape kv = cache_for(c, 2);

  const std::vector<float> ref = fresh_logits(b, kv, prompt);

  CudaOps gpu(0);
  gpu.set_cuda_graphs(true);
  gpu.init(c, kv);
  expect_same_bits(prefill_logits(gpu, a, prompt), ref, "model a");  // buffers of this shape in place
  gpu.init(c, kv);  // (forgets the shapes seen and their recordings)
  {
    MemoryHog hog;
    ASSERT_FALSE(hog.blocks.empty());
    try {
      prefill_logits(gpu, b, prompt);
      ADD_FAILURE() << "uploading weights with no free memory did not fail";
    } catch (const Error& e) {
      expect_clear_message(e.what());
    }
  }
  // A step that threw does not count as the shape's first: the retry runs op by op (uploading
  // what is missing), the next is recorded, the one after replayed; all with the same bits.
  const int64_t replays = gpu.graph_replays();
  for (int i = 0; i < 3; ++i) expect_same_bits(prefill_logits(gpu, b, prompt), ref, "after the memory is back");
  EXPECT_EQ(gpu.graph_replays(), replays + 1);
  gpu.synchronize();
}

}  // namespace
