#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "kernels/cpu/ops.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace detinfer {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "running";
    case FinishReason::Length: return "length";
    case FinishReason::Eos: return "eos";
    case FinishReason::StopToken: return "stop_token";
    case FinishReason::StopString: return "stop";
    case FinishReason::ContextFull: return "context_full";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "?";
}

struct Engine::Req {
  RequestId id = 0;
  Request request;
  TokenCallback on_token;
  RequestResult result;
  std::vector<std::unique_ptr<Seq>> seqs;
  int running = 0;  // sequences not finished
};

struct Engine::Seq {
  Req* req = nullptr;
  int completion = 0;
  uint64_t seed = 0;
  std::vector<int32_t> tokens;  // prompt, then generated
  int64_t n_prompt = 0;
  int64_t n_computed = 0;       // tokens whose K/V are in the cache
  int64_t n_published = 0;      // full blocks offered to the prefix cache
  int64_t max_len = 0;          // prompt + max_tokens, capped by the context
  std::vector<int32_t> blocks;
  std::unique_ptr<Tokenizer::StreamDecoder> decoder;
  size_t emitted = 0;           // characters of completion text given to the callback
  bool admitted = false;
  FinishReason finish = FinishReason::None;
  Completion& out() { return req->result.completions[completion]; }
};

Engine::Engine(const ModelConfig& config, const ModelWeights& weights, const Tokenizer* tokenizer,
               Ops& ops, EngineOptions options)
    : config_(config), weights_(weights), tokenizer_(tokenizer), ops_(ops), options_(options) {
  DETINFER_CHECK(options_.block_size > 0 && options_.block_size <= 4096, "block size ",
                 options_.block_size, " is out of range (1..4096)");
  DETINFER_CHECK(options_.max_step_tokens > 0, "max step tokens must be positive");
  DETINFER_CHECK(options_.max_seqs > 0, "max sequences must be positive");
  DETINFER_CHECK(options_.prefill_chunk >= 0, "prefill chunk must be ≥ 0");
  const int64_t blocks_per_seq = (config_.max_context + options_.block_size - 1) / options_.block_size;
  if (options_.kv_blocks == 0) {
    const int64_t block_bytes =
        int64_t{2} * config_.n_layers * options_.block_size * config_.kv_dim() * ops_.kv_value_bytes();
    options_.kv_blocks = std::max<int64_t>(
        1, std::min(blocks_per_seq * options_.max_seqs, options_.kv_bytes_default / block_bytes));
  }
  KvCacheShape kv;
  kv.n_layers = config_.n_layers;
  kv.num_blocks = options_.kv_blocks;
  kv.block_size = options_.block_size;
  kv.n_kv_heads = config_.n_kv_heads;
  kv.head_dim = config_.head_dim;
  kv.value_bytes = ops_.kv_value_bytes();
  pool_ = std::make_unique<KvBlockPool>(kv.num_blocks, kv.block_size, options_.prefix_cache);
  ops_.init(config_, kv);
  logprob_row_.resize(config_.vocab_size);
}

Engine::~Engine() = default;

int64_t Engine::kv_bytes() const {
  return int64_t{2} * config_.n_layers * options_.kv_blocks * options_.block_size * config_.kv_dim() *
         ops_.kv_value_bytes();
}

RequestId Engine::submit(Request request, TokenCallback on_token) {
  const SamplingParams& p = request.params;
  validate(p);
  const int64_t n = static_cast<int64_t>(request.prompt.size());
  DETINFER_CHECK(n > 0, "the prompt is empty");
  for (int32_t t : request.prompt)
    DETINFER_CHECK(t >= 0 && t < config_.vocab_size, "prompt token id ", t,
                   " is outside the vocabulary (0..", config_.vocab_size - 1, ")");
  DETINFER_CHECK(n < config_.max_context, "the prompt has ", n,
                 " tokens; the model's context is ", config_.max_context,
                 " tokens, so no token could be generated. Shorten the prompt.");
  const int64_t max_len = std::min<int64_t>(n + p.max_tokens, config_.max_context);
  const int64_t blocks = (max_len + options_.block_size - 1) / options_.block_size;
  DETINFER_CHECK(blocks <= pool_->num_blocks(), "the request needs ", blocks, " KV blocks (",
                 max_len, " tokens) but the cache has ", pool_->num_blocks(),
                 "; lower max_tokens or raise the KV cache size");

  auto r = std::make_unique<Req>();
  r->id = static_cast<RequestId>(requests_.size());
  r->on_token = std::move(on_token);
  r->result.seed = p.seed ? *p.seed : draw_seed();
  r->result.completions.resize(p.n);
  if (request.prompt_logprobs)
    r->result.prompt_logprobs.assign(n, std::numeric_limits<float>::quiet_NaN());
  for (int i = 0; i < p.n; ++i) {
    auto s = std::make_unique<Seq>();
    s->req = r.get();
    s->completion = i;
    s->seed = derive_seed(r->result.seed, static_cast<uint64_t>(i));
    s->tokens = request.prompt;
    s->n_prompt = n;
    s->max_len = max_len;
    if (tokenizer_) s->decoder = std::make_unique<Tokenizer::StreamDecoder>(*tokenizer_);
    waiting_.push_back(s.get());
    r->seqs.push_back(std::move(s));
  }
  r->running = p.n;
  r->request = std::move(request);
  requests_.push_back(std::move(r));
  return requests_.back()->id;
}

bool Engine::admit(Seq& s) {
  const int B = options_.block_size;
  const int64_t need = (s.max_len + B - 1) / B;
  std::vector<int32_t> cached;
  // Prompt logprobs need the logits of every prompt position, so such requests skip the cache.
  // At least one prompt token is always computed: its logits give the first generated token.
  if (!s.req->request.prompt_logprobs)
    cached = pool_->acquire_prefix(s.tokens, s.n_prompt - 1);
  if (pool_->available() < need - static_cast<int64_t>(cached.size())) {
    for (int32_t b : cached) pool_->release(b);
    return false;
  }
  s.blocks = std::move(cached);
  s.n_computed = static_cast<int64_t>(s.blocks.size()) * B;
  s.n_published = static_cast<int64_t>(s.blocks.size());
  while (static_cast<int64_t>(s.blocks.size()) < need) {
    int32_t b = pool_->allocate();
    DETINFER_CHECK(b >= 0, "KV cache: no block left after the availability check");
    s.blocks.push_back(b);
  }
  s.admitted = true;
  return true;
}

void Engine::release_blocks(Seq& s) {
  for (int32_t b : s.blocks) pool_->release(b);
  s.blocks.clear();
}

void Engine::finish(Seq& s, FinishReason why) {
  if (s.finish != FinishReason::None) return;
  s.finish = why;
  Completion& c = s.out();
  c.finish = why;
  if (s.decoder && why != FinishReason::StopString) c.text += s.decoder->flush();
  if (s.req->on_token && c.text.size() > s.emitted)
    s.req->on_token(s.req->id, s.completion, -1, c.text.substr(s.emitted));
  s.emitted = c.text.size();
  release_blocks(s);
  --s.req->running;
  running_.erase(std::remove(running_.begin(), running_.end(), &s), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), &s), waiting_.end());
}

SampleRow Engine::sample_row(const Seq& s) const {
  const SamplingParams& p = s.req->request.params;
  SampleRow row;
  row.temperature = p.temperature, row.top_p = p.top_p, row.min_p = p.min_p;
  row.repetition_penalty = p.repetition_penalty;
  row.frequency_penalty = p.frequency_penalty, row.presence_penalty = p.presence_penalty;
  row.top_k = p.top_k, row.n_logprobs = p.logprobs;
  row.seed = s.seed;
  row.token_index = static_cast<int64_t>(s.tokens.size()) - s.n_prompt;
  row.history = s.tokens.data();
  row.history_len = static_cast<int64_t>(s.tokens.size());
  row.n_prompt = s.n_prompt;
  return row;
}

void Engine::on_logits(Seq& s, const float* logits) {
  const SamplingParams& p = s.req->request.params;
  const int64_t index = static_cast<int64_t>(s.tokens.size()) - s.n_prompt;
  on_sample(s, sampler_.sample(logits, config_.vocab_size, p, s.seed, index, s.tokens,
                               static_cast<size_t>(s.n_prompt)));
}

void Engine::on_sample(Seq& s, SampleResult r) {
  const SamplingParams& p = s.req->request.params;
  s.tokens.push_back(r.token);
  Completion& c = s.out();
  c.tokens.push_back(r.token);
  c.logprobs.push_back(r.logprob);
  if (p.logprobs > 0) c.top_logprobs.push_back(std::move(r.top));

  FinishReason why = FinishReason::None;
  const bool eos = tokenizer_ && tokenizer_->is_eos(r.token) && !p.ignore_eos;
  const bool stop_token =
      std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), r.token) != p.stop_token_ids.end();
  if (eos) why = FinishReason::Eos;
  else if (stop_token) why = FinishReason::StopToken;
  if (s.decoder && why == FinishReason::None) {
    const size_t before = c.text.size();
    c.text += s.decoder->push(r.token);
    // The earliest stop string that ends in the new text; hold back what could still begin one.
    size_t cut = std::string::npos, hold = 0;
    for (const std::string& stop : p.stop) {
      if (stop.empty()) continue;
      const size_t from = before >= stop.size() - 1 ? before - (stop.size() - 1) : 0;
      cut = std::min(cut, c.text.find(stop, from));
      hold = std::max(hold, stop.size() - 1);
    }
    if (cut != std::string::npos) {
      c.text.resize(cut);
      why = FinishReason::StopString;
    } else if (s.req->on_token) {
      const size_t upto = c.text.size() > hold ? c.text.size() - hold : 0;
      std::string piece = upto > s.emitted ? c.text.substr(s.emitted, upto - s.emitted) : "";
      s.emitted = std::max(s.emitted, upto);
      s.req->on_token(s.req->id, s.completion, r.token, piece);
    }
  } else if (s.req->on_token && why == FinishReason::None) {
    s.req->on_token(s.req->id, s.completion, r.token, "");
  }
  if (why == FinishReason::None) {
    if (static_cast<int64_t>(c.tokens.size()) >= p.max_tokens) why = FinishReason::Length;
    else if (static_cast<int64_t>(s.tokens.size()) >= config_.max_context) why = FinishReason::ContextFull;
    else if (static_cast<int64_t>(s.tokens.size()) >= s.max_len) why = FinishReason::Length;
  }
  if (why != FinishReason::None) finish(s, why);
}

bool Engine::step() {
  // Admit in arrival order; stop at the first that does not fit, so none is overtaken forever.
  while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_seqs) {
    Seq* s = waiting_.front();
    if (!admit(*s)) break;
    waiting_.erase(waiting_.begin());
    running_.push_back(s);
  }
  if (running_.empty()) {
    DETINFER_CHECK(waiting_.empty(), "KV cache too small for the next waiting request");
    return false;
  }

  std::vector<Seq*> order = running_;
  if (options_.shuffle_seed) {  // a deterministic shuffle, different every step
    uint64_t x = options_.shuffle_seed ^ (0x9e3779b97f4a7c15ull * (stats_.steps + 1));
    for (size_t i = order.size(); i > 1; --i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      std::swap(order[i - 1], order[x % i]);
    }
  }

  StepBatch& b = batch_;
  b.tokens.clear(), b.pos.clear(), b.seq.clear(), b.block_tables.clear(), b.logit_tokens.clear();
  struct Part { Seq* s; int64_t begin, end; size_t first_logit; };
  std::vector<Part> parts;
  int64_t budget = options_.max_step_tokens, prefill_tokens = 0;
  for (Seq* s : order) {
    if (budget == 0) break;
    const int64_t pending = static_cast<int64_t>(s->tokens.size()) - s->n_computed;
    int64_t take = std::min(pending, budget);
    if (options_.prefill_chunk > 0) take = std::min(take, options_.prefill_chunk);
    const int32_t seq_index = static_cast<int32_t>(b.block_tables.size());
    b.block_tables.push_back(s->blocks);
    Part part{s, s->n_computed, s->n_computed + take, b.logit_tokens.size()};
    const bool want_prompt_lp = s->req->request.prompt_logprobs;
    for (int64_t p = part.begin; p < part.end; ++p) {
      const bool last = p + 1 == static_cast<int64_t>(s->tokens.size());
      if (last || (want_prompt_lp && p + 1 < s->n_prompt))
        b.logit_tokens.push_back(static_cast<int32_t>(b.tokens.size()));
      b.tokens.push_back(s->tokens[p]);
      b.pos.push_back(static_cast<int32_t>(p));
      b.seq.push_back(seq_index);
    }
    if (part.begin < s->n_prompt) prefill_tokens += std::min(part.end, s->n_prompt) - part.begin;
    budget -= take;
    parts.push_back(part);
  }

  const auto t0 = std::chrono::steady_clock::now();
  const int64_t V = config_.vocab_size;
  // On a backend that samples where the logits are, they stay there; otherwise they come to the
  // backend's host buffer (pinned memory on a GPU, where copies into it are fastest).
  const bool on_device = ops_.samples_on_device();
  float* logits =
      on_device ? nullptr : ops_.host_buffer(static_cast<int64_t>(b.logit_tokens.size()) * V);
  const float* device_logits = llama_forward(ops_, config_, weights_, b, logits);
  const auto t1 = std::chrono::steady_clock::now();
  ++stats_.steps;
  stats_.prefill_tokens += prefill_tokens;
  stats_.decode_tokens += b.n_tokens() - prefill_tokens;

  if (on_device && !b.logit_tokens.empty()) {
    // One row per logit token, in the order the loop below reads them.
    std::vector<SampleRow>& rows = sample_rows_;
    rows.clear();
    for (const Part& part : parts) {
      const Seq& s = *part.s;
      if (s.req->request.prompt_logprobs)
        for (int64_t p = part.begin; p < part.end && p + 1 < s.n_prompt; ++p) {
          SampleRow r;
          r.want_token = s.tokens[p + 1];
          rows.push_back(r);
        }
      if (part.end == static_cast<int64_t>(s.tokens.size())) rows.push_back(sample_row(s));
    }
    DETINFER_CHECK(rows.size() == b.logit_tokens.size(), "engine: ", rows.size(),
                   " sampling rows for ", b.logit_tokens.size(), " logit rows");
    samples_.resize(rows.size());
    ops_.sample_rows(device_logits, static_cast<int64_t>(rows.size()), static_cast<int32_t>(V),
                     rows.data(), samples_.data());
  }
  for (const Part& part : parts) {
    Seq& s = *part.s;
    s.n_computed = part.end;
    // Offer every block whose positions are all computed to the prefix cache.
    while ((s.n_published + 1) * options_.block_size <= s.n_computed) {
      pool_->publish(s.blocks[s.n_published], s.tokens, s.n_published);
      ++s.n_published;
    }
    size_t row = part.first_logit;
    if (s.req->request.prompt_logprobs) {
      for (int64_t p = part.begin; p < part.end && p + 1 < s.n_prompt; ++p, ++row) {
        if (on_device) {
          s.req->result.prompt_logprobs[p + 1] = samples_[row].logprob;
          continue;
        }
        cpu::log_softmax(logits + row * V, V, logprob_row_.data());
        s.req->result.prompt_logprobs[p + 1] = logprob_row_[s.tokens[p + 1]];
      }
    }
    if (part.end == static_cast<int64_t>(s.tokens.size())) {
      if (!on_device) {
        on_logits(s, logits + row * V);
        continue;
      }
      SampleRowResult& d = samples_[row];
      SampleResult r;
      r.token = d.token;
      r.logprob = d.logprob;
      for (const auto& [t, lp] : d.top) r.top.push_back(TokenLogprob{t, lp});
      on_sample(s, std::move(r));
    }
  }
  const auto t2 = std::chrono::steady_clock::now();
  stats_.sample_seconds += std::chrono::duration<double>(t2 - t1).count();
  (prefill_tokens > 0 ? stats_.prefill_seconds : stats_.decode_seconds) +=
      std::chrono::duration<double>(t2 - t0).count();
  return true;
}

void Engine::run() {
  while (step()) {
  }
}

bool Engine::done(RequestId id) const {
  DETINFER_CHECK(id >= 0 && id < static_cast<RequestId>(requests_.size()) && requests_[id],
                 "unknown request id ", id);
  return requests_[id]->running == 0;
}

RequestResult Engine::take(RequestId id) {
  DETINFER_CHECK(done(id), "request ", id, " has not finished");
  RequestResult r = std::move(requests_[id]->result);
  requests_[id].reset();
  return r;
}

void Engine::cancel(RequestId id) {
  DETINFER_CHECK(id >= 0 && id < static_cast<RequestId>(requests_.size()) && requests_[id],
                 "unknown request id ", id);
  for (auto& s : requests_[id]->seqs) finish(*s, FinishReason::Cancelled);
}

std::vector<RequestResult> Engine::generate(std::vector<Request> requests) {
  std::vector<RequestId> ids;
  for (Request& r : requests) ids.push_back(submit(std::move(r)));
  run();
  std::vector<RequestResult> out;
  for (RequestId id : ids) out.push_back(take(id));
  return out;
}

}  // namespace detinfer
