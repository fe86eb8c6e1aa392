// The Llama family forward pass (Llama 2/3.x, SmolLM2, Qwen2, Qwen3): one decoder written once
// against Ops. The family differences are flags in ModelConfig: QKV bias (Qwen2), per-head q/k
// RMSNorm (Qwen3), Llama-3 RoPE scaling, tied embeddings.
#pragma once
#include "model/config.h"
#include "model/ops.h"

namespace detinfer {

// Runs the batch through the model; the logits of batch.logit_tokens ([logit_tokens.size(),
// vocab]) are copied to logits_host (host memory) unless it is null. Returns them in the
// backend's memory (valid until the next step; null when no logits were asked for).
const float* llama_forward(Ops& ops, const ModelConfig& c, const ModelWeights& w,
                           const StepBatch& batch, float* logits_host);

}  // namespace detinfer
