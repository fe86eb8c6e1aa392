#include "runtime/verify.h"

#include <cmath>
#include <cstring>
#include <random>
#include <set>

#include "common/error.h"
#include "model/ops.h"

namespace detinfer {

namespace {

int64_t ulp_distance(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if (ia < 0) ia = INT32_MIN - ia;  // map to a monotonic integer line
  if (ib < 0) ib = INT32_MIN - ib;
  return std::llabs(static_cast<int64_t>(ia) - ib);
}

struct Sampling {
  std::string name;
  SamplingParams params;
};

std::vector<Sampling> sampling_configs(bool with_sampling, int max_tokens) {
  std::vector<Sampling> out;
  auto add = [&](std::string name, auto set) {
    SamplingParams p;
    p.max_tokens = max_tokens;
    p.seed = 1234;
    p.ignore_eos = true;  // same length every run, so every position is compared
    p.logprobs = 3;
    set(p);
    out.push_back({std::move(name), p});
  };
  add("greedy", [](SamplingParams&) {});
  if (!with_sampling) return out;
  add("t=0.7", [](SamplingParams& p) { p.temperature = 0.7f; });
  add("t=1.0 top-k 40 top-p 0.9", [](SamplingParams& p) {
    p.temperature = 1.0f, p.top_k = 40, p.top_p = 0.9f;
  });
  add("t=1.0 min-p 0.05 penalties", [](SamplingParams& p) {
    p.temperature = 1.0f, p.min_p = 0.05f, p.repetition_penalty = 1.1f;
    p.frequency_penalty = 0.2f, p.presence_penalty = 0.1f;
  });
  return out;
}

}  // namespace

std::string compare_completions(const Completion& a, const Completion& b, bool* identical) {
  *identical = false;
  const size_t n = std::min(a.tokens.size(), b.tokens.size());
  for (size_t i = 0; i < n; ++i) {
    if (a.tokens[i] != b.tokens[i])
      return cat("token ", i, " differs: ", a.tokens[i], " vs ", b.tokens[i]);
    if (std::memcmp(&a.logprobs[i], &b.logprobs[i], 4) != 0)
      return cat("logprob of token ", i, " differs by ", ulp_distance(a.logprobs[i], b.logprobs[i]),
                 " ulp (", a.logprobs[i], " vs ", b.logprobs[i], ")");
    if (i < a.top_logprobs.size() && i < b.top_logprobs.size()) {
      const auto &ta = a.top_logprobs[i], &tb = b.top_logprobs[i];
      for (size_t j = 0; j < std::min(ta.size(), tb.size()); ++j)
        if (ta[j].token != tb[j].token || std::memcmp(&ta[j].logprob, &tb[j].logprob, 4) != 0)
          return cat("top logprob ", j, " of token ", i, " differs");
    }
  }
  if (a.tokens.size() != b.tokens.size())
    return cat("lengths differ: ", a.tokens.size(), " vs ", b.tokens.size(), " tokens");
  *identical = true;
  return "identical";
}

std::string digest(const std::vector<RequestResult>& results) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const void* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const uint8_t*>(p)[i]) * 1099511628211ull;
  };
  for (const RequestResult& r : results)
    for (const Completion& c : r.completions) {
      mix(c.tokens.data(), c.tokens.size() * 4);
      mix(c.logprobs.data(), c.logprobs.size() * 4);
    }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::vector<VerifyCase> run_verify(const ModelConfig& config, const ModelWeights& weights,
                                   const Tokenizer* tokenizer, const OpsFactory& make_ops,
                                   int threads, const VerifyOptions& o,
                                   const std::function<void(const VerifyCase&)>& on_case) {
  DETINFER_CHECK(!o.prompts.empty(), "verify: no prompts");
  std::vector<VerifyCase> cases;
  auto engine_opts = [&] {
    EngineOptions e;
    e.block_size = o.block_size;
    e.kv_bytes_default = o.kv_bytes;
    e.max_seqs = 64;
    e.prefix_cache = false;
    return e;
  };
  // One request through a fresh engine.
  auto run_alone = [&](const Request& r, EngineOptions e, int n_threads) {
    auto ops = make_ops(n_threads);
    Engine engine(config, weights, tokenizer, *ops, e);
    return engine.generate({r})[0];
  };
  auto record = [&](VerifyCase c, const Completion& ref, const Completion& got) {
    c.detail = compare_completions(ref, got, &c.identical);
    if (on_case) on_case(c);
    cases.push_back(std::move(c));
  };

  std::mt19937_64 rng(2024);
  auto random_request = [&](int max_len) {
    Request r;
    std::uniform_int_distribution<int> len(1, max_len), tok(0, config.vocab_size - 1);
    for (int n = len(rng); n > 0; --n) r.prompt.push_back(tok(rng));
    r.params.max_tokens = 1 + static_cast<int>(rng() % (2 * o.max_tokens));
    r.params.temperature = (rng() % 2) ? 0.9f : 0.0f;
    r.params.seed = rng();
    return r;
  };

  for (const Sampling& s : sampling_configs(o.sampling, o.max_tokens)) {
    for (size_t pi = 0; pi < o.prompts.size(); ++pi) {
      Request req;
      req.prompt = o.prompts[pi];
      req.params = s.params;
      const int64_t n_prompt = static_cast<int64_t>(req.prompt.size());
      const RequestResult ref = run_alone(req, engine_opts(), threads);
      const Completion& want = ref.completions[0];
      auto base = [&](const char* test, std::string setting) {
        VerifyCase c;
        c.test = test, c.setting = std::move(setting), c.sampling = s.name, c.prompt = static_cast<int>(pi);
        return c;
      };

      // T2 and T10: among others of random lengths, at a random slot, some decoding already.
      for (int others : o.batch_others) {
        std::set<std::string> outputs;
        for (int trial = 0; trial < std::max(1, o.trials); ++trial) {
          auto ops = make_ops(threads);
          EngineOptions e = engine_opts();
          e.shuffle_seed = rng() | 1;
          e.prefill_chunk = static_cast<int64_t>(1 + rng() % 64);
          e.max_seqs = std::min(256, others + 1);
          Engine engine(config, weights, tokenizer, *ops, e);
          const int before = others / 2;
          for (int i = 0; i < before; ++i) engine.submit(random_request(48));
          engine.step();
          RequestId id = engine.submit(req);
          for (int i = before; i < others; ++i) engine.submit(random_request(48));
          engine.run();
          RequestResult got = engine.take(id);
          outputs.insert(digest({got}));
          if (trial == 0) record(base("T2", cat("among ", others, " others")), want, got.completions[0]);
        }
        VerifyCase c = base("T10", cat(o.trials, " trials among ", others, " others"));
        c.identical = outputs.size() == 1;
        c.detail = cat(outputs.size(), " unique output", outputs.size() == 1 ? "" : "s");
        if (on_case) on_case(c);
        cases.push_back(c);
      }
      // T3: prefill chunk sizes.
      for (int64_t chunk : o.chunks) {
        EngineOptions e = engine_opts();
        e.prefill_chunk = chunk;
        record(base("T3", cat("chunk ", chunk)), want, run_alone(req, e, threads).completions[0]);
      }
      // T4: a prefix of the prompt computed earlier and served from the prefix cache.
      for (int64_t len : o.prefix_lengths) {
        if (len >= n_prompt) continue;
        auto ops = make_ops(threads);
        EngineOptions e = engine_opts();
        e.prefix_cache = true;
        Engine engine(config, weights, tokenizer, *ops, e);
        Request warm;
        warm.prompt.assign(req.prompt.begin(), req.prompt.begin() + len);
        warm.params.max_tokens = 1;
        engine.generate({warm});
        record(base("T4", cat("cached prefix ", len)), want, engine.generate({req})[0].completions[0]);
      }
      // T5: the logprob of each generated token equals the one from prefilling prompt + output.
      {
        Request full;
        full.prompt = req.prompt;
        full.prompt.insert(full.prompt.end(), want.tokens.begin(), want.tokens.end());
        full.params.max_tokens = 1;
        full.prompt_logprobs = true;
        VerifyCase c = base("T5", "prefill vs decode logprobs");
        if (static_cast<int64_t>(full.prompt.size()) >= config.max_context) {
          c.identical = true, c.detail = "skipped: prompt + output exceed the context";
        } else {
          RequestResult got = run_alone(full, engine_opts(), threads);
          Completion as_prefill = want;
          for (size_t i = 0; i < want.tokens.size(); ++i)
            as_prefill.logprobs[i] = got.prompt_logprobs[n_prompt + i];
          as_prefill.top_logprobs.clear();
          Completion w = want;
          w.top_logprobs.clear();
          c.detail = compare_completions(w, as_prefill, &c.identical);
        }
        if (on_case) on_case(c);
        cases.push_back(c);
      }
      // T7: CPU thread counts.
      for (int t : o.thread_counts)
        record(base("T7", cat(t, " thread", t == 1 ? "" : "s")), want,
               run_alone(req, engine_opts(), t).completions[0]);
    }
  }
  return cases;
}

}  // namespace detinfer
