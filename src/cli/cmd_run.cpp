// detinfer run: one prompt in, streamed text out, speeds at the end.
// detinfer chat: an interactive conversation through the model's chat template.
#include <chrono>
#include <cstring>
#include <cstdio>
#include <iostream>
#include <random>

#include "cli/cli.h"
#include "common/error.h"

namespace detinfer::cli {

namespace {

struct RunOptions {
  ModelOptions model;
  SamplingOptions sampling;
  std::string prompt;
  std::string system;
  bool raw = false;
  int check_batch = 0;
  int64_t kv_mb = 1024;
  std::string chat_template;  // override: chatml | llama3
};

EngineOptions engine_options(int64_t kv_mb) {
  EngineOptions o;
  o.kv_bytes_default = kv_mb << 20;
  return o;
}

// The chat template renders BOS itself where the model wants one, so the text is encoded
// without adding another (as transformers' apply_chat_template does).
std::vector<int32_t> encode_prompt(const Tokenizer& tok, const RunOptions& o,
                                   const std::vector<ChatMessage>& history) {
  if (o.raw) return tok.encode(o.prompt, true);
  return tok.encode(tok.render_chat(history, true), false);
}

// The tokenizer, with the --chat-template override applied; Error early if chat needs a
// template the model lacks.
Tokenizer make_tokenizer(const LoadedModel& m, const RunOptions& o) {
  Tokenizer tok(m.tokenizer);
  const std::string bos = m.tokenizer.bos_id >= 0 ? tok.token_text(m.tokenizer.bos_id) : "";
  if (!o.chat_template.empty())
    tok.set_chat_template(ChatTemplate::from_format(chat_format_from_name(o.chat_template),
                                                    m.tokenizer.chat_template, bos));
  else if (!o.raw && m.tokenizer.chat_template.empty())
    fail("the model has no chat template; pass --raw to send the prompt as is, or --chat-template chatml|llama3");
  if (!o.raw) tok.chat_template();  // throws now, with advice, for a template we do not know
  return tok;
}

// Runs one request, printing its text as it comes; Ctrl-C cancels it (the partial text stays).
RequestResult stream_to_stdout(Engine& engine, const Request& req) {
  RequestId id = engine.submit(req, [](RequestId, int, int32_t, const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  });
  while (!engine.done(id)) {
    if (g_interrupted) engine.cancel(id);
    engine.step();
  }
  std::printf("\n");
  return engine.take(id);
}

void print_stats(const Engine& e, size_t prompt_tokens, const RequestResult& r, double wall) {
  const Engine::Stats& s = e.stats();
  const Completion& c = r.completions[0];
  std::fprintf(stderr, "\n[%zu prompt tokens, %zu generated, finish: %s, seed %llu]\n", prompt_tokens,
               c.tokens.size(), finish_reason_name(c.finish), static_cast<unsigned long long>(r.seed));
  std::fprintf(stderr, "[prefill %.1f tok/s, decode %.1f tok/s, %.2f s in all]\n",
               s.prefill_seconds > 0 ? s.prefill_tokens / s.prefill_seconds : 0.0,
               s.decode_seconds > 0 ? s.decode_tokens / s.decode_seconds : 0.0, wall);
}

// Runs the same request again among `others` random requests (random lengths and slots) and says
// whether its tokens and logprobs came out bitwise identical.
void check_in_batch(const LoadedModel& m, const Tokenizer& tok, Ops& ops, const RunOptions& o,
                    const Request& req, const RequestResult& alone) {
  EngineOptions eo = engine_options(o.kv_mb);
  eo.shuffle_seed = 12345;
  eo.prefill_chunk = 7;
  Engine engine(m.config, m.weights, &tok, ops, eo);
  std::mt19937 rng(7);
  std::vector<RequestId> others;
  for (int i = 0; i < o.check_batch; ++i) {
    Request other;
    std::uniform_int_distribution<int> len(1, 40), id(0, m.config.vocab_size - 1);
    for (int n = len(rng); n > 0; --n) other.prompt.push_back(id(rng));
    other.params.max_tokens = 1 + static_cast<int>(rng() % 24);
    other.params.temperature = 0.8f;
    other.params.seed = rng();
    others.push_back(engine.submit(other));
    if (i % 3 == 0) engine.step();  // some others already decoding when ours arrives
  }
  Request again = req;
  again.params.seed = alone.seed;
  RequestId id = engine.submit(again);
  engine.run();
  RequestResult r = engine.take(id);
  const Completion &a = alone.completions[0], &b = r.completions[0];
  const bool same = a.tokens == b.tokens && a.logprobs.size() == b.logprobs.size() &&
                    std::memcmp(a.logprobs.data(), b.logprobs.data(), a.logprobs.size() * sizeof(float)) == 0;
  std::fprintf(stderr, "[batch check: the same request among %d others (prefill chunks of 7, shuffled slots): %s]\n",
               o.check_batch, same ? "bitwise identical tokens and logprobs" : "DIFFERENT");
  if (!same) fail("batch invariance check failed");
}

void run(const RunOptions& o) {
  LoadedModel m = load(o.model);
  Tokenizer tok = make_tokenizer(m, o);
  const int threads = resolve_threads(o.model.threads);
  const std::string device = resolve_device(o.model);
  auto ops = make_ops(device, threads, o.model.deterministic());
  Engine engine(m.config, m.weights, &tok, *ops, engine_options(o.kv_mb));
  std::vector<ChatMessage> history;
  if (!o.system.empty()) history.push_back({"system", o.system});
  history.push_back({"user", o.prompt});
  Request req;
  req.prompt = encode_prompt(tok, o, history);
  req.params = o.sampling.get();
  install_sigint_handler();
  auto t0 = std::chrono::steady_clock::now();
  RequestResult r = stream_to_stdout(engine, req);
  print_stats(engine, req.prompt.size(), r,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (o.sampling.params.logprobs > 0) {
    const Completion& c = r.completions[0];
    for (size_t i = 0; i < c.tokens.size(); ++i) {
      std::fprintf(stderr, "%4zu %7d %-16s %.6f |", i, c.tokens[i], tok.token_text(c.tokens[i]).c_str(), c.logprobs[i]);
      for (const TokenLogprob& t : c.top_logprobs[i]) std::fprintf(stderr, " %d:%.4f", t.token, t.logprob);
      std::fprintf(stderr, "\n");
    }
  }
  if (o.check_batch > 0 && !g_interrupted) {
    auto check_ops = make_ops(device, threads, o.model.deterministic());  // a fresh backend: nothing shared with the first run
    check_in_batch(m, tok, *check_ops, o, req, r);
  }
}

void chat(const RunOptions& o) {
  LoadedModel m = load(o.model);
  Tokenizer tok = make_tokenizer(m, o);
  auto ops = make_ops(resolve_device(o.model), resolve_threads(o.model.threads), o.model.deterministic());
  Engine engine(m.config, m.weights, &tok, *ops, engine_options(o.kv_mb));
  std::vector<ChatMessage> history;
  if (!o.system.empty()) history.push_back({"system", o.system});
  install_sigint_handler();
  std::fprintf(stderr, "chat with %s (/reset clears the conversation, /quit or Ctrl-D leaves; Ctrl-C stops a reply)\n",
               m.config.name.c_str());
  std::string line;
  while (true) {
    std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line) || line == "/quit") break;
    if (line.empty()) continue;
    if (line == "/reset") {
      history.resize(o.system.empty() ? 0 : 1);
      continue;
    }
    history.push_back({"user", line});
    RunOptions turn = o;
    Request req;
    req.prompt = encode_prompt(tok, turn, history);
    req.params = o.sampling.get();
    if (static_cast<int64_t>(req.prompt.size()) >= m.config.max_context) {
      std::fprintf(stderr, "the conversation no longer fits in the context (%d tokens); /reset to start over\n",
                   m.config.max_context);
      history.pop_back();
      continue;
    }
    g_interrupted = false;
    RequestResult r = stream_to_stdout(engine, req);
    history.push_back({"assistant", r.completions[0].text});
  }
}

void add_common(CLI::App* cmd, RunOptions& o) {
  o.model.add(cmd);
  o.sampling.add(cmd);
  cmd->add_option("--system", o.system, "system message");
  cmd->add_option("--chat-template", o.chat_template, "override the model's template: chatml or llama3");
  cmd->add_option("--kv-mb", o.kv_mb, "KV cache size in MiB")->check(CLI::Range(1, 1 << 20));
}

}  // namespace

void add_run(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  auto* cmd = app.add_subcommand("run", "generate a reply to one prompt, streamed, with speeds at the end");
  add_common(cmd, *o);
  cmd->add_option("prompt", o->prompt, "the prompt")->required();
  cmd->add_flag("--raw", o->raw, "send the prompt as is, without the chat template");
  cmd->add_option("--check-batch", o->check_batch,
                  "then run the same request among N random others and check the bits are identical");
  cmd->callback([o] { run(*o); });
}

void add_chat(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  auto* cmd = app.add_subcommand("chat", "interactive chat with the model's chat template");
  add_common(cmd, *o);
  cmd->callback([o] { chat(*o); });
}

}  // namespace detinfer::cli
