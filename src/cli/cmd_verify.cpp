// detinfer verify: runs the end-to-end determinism tests (T2–T7, T10) on the loaded model and
// prints one row per case; exits non-zero on any difference.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli/cli.h"
#include "common/error.h"
#include "runtime/verify.h"

namespace detinfer::cli {

namespace {

const char* kBuiltinPrompts[] = {
    "The quick brown fox jumps over the lazy dog. Write a short poem about determinism.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Explain, step by step, why floating-point addition is not associative, and what that means "
    "for a program that sums the same numbers in a different order on another day. 1 + 2 = 3; "
    "0.1 + 0.2 = 0.30000000000000004.",
};

struct VerifyCli {
  ModelOptions model;
  std::string prompts_file;
  bool quick = false;
  bool long_prompt = false;
  int max_tokens = 12;
  int trials = 3;
  bool child_digest = false;
  int64_t kv_mb = 1024;
};

std::vector<std::vector<int32_t>> load_prompts(const VerifyCli& o, const Tokenizer& tok, int max_context) {
  std::vector<std::string> texts;
  if (!o.prompts_file.empty()) {
    std::ifstream in(o.prompts_file);
    DETINFER_CHECK(in, o.prompts_file, ": cannot open the prompts file");
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) texts.push_back(line);
    DETINFER_CHECK(!texts.empty(), o.prompts_file, ": no prompts (one per line)");
  } else {
    texts.assign(std::begin(kBuiltinPrompts), std::end(kBuiltinPrompts));
    if (o.quick) texts.resize(1);
  }
  std::vector<std::vector<int32_t>> out;
  for (const std::string& t : texts) {
    std::vector<int32_t> ids = tok.encode(t, true);
    if (static_cast<int>(ids.size()) + o.max_tokens >= max_context) ids.resize(max_context / 2);
    out.push_back(std::move(ids));
  }
  if (o.long_prompt) {  // long enough for the 2048 and 4097-token prefix-cache cases
    std::string text;
    while (static_cast<int>(tok.encode(text, true).size()) < 4200) text += std::string(kBuiltinPrompts[2]) + "\n";
    std::vector<int32_t> ids = tok.encode(text, true);
    ids.resize(std::min<size_t>(ids.size(), static_cast<size_t>(max_context - o.max_tokens - 1)));
    out.push_back(std::move(ids));
  }
  return out;
}

// T7 across processes: this binary again, as a child, computes the reference outputs.
std::string child_digest(const VerifyCli& o, const std::string& model_path) {
  // Resolve our own path here: inside popen's shell, /proc/self/exe would be the shell.
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::string cmd = cat("'", self, "' verify --child-digest --device ", resolve_device(o.model), " --determinism ", o.model.determinism, " -m '",
                        model_path, "' --max-tokens ",
                        o.max_tokens, " -t ", resolve_threads(o.model.threads), o.quick ? " --quick" : "",
                        o.long_prompt ? " --long" : "");
  if (!o.prompts_file.empty()) cmd += cat(" --prompts '", o.prompts_file, "'");
  FILE* p = popen(cmd.c_str(), "r");
  DETINFER_CHECK(p, "verify: cannot start a second process");
  char buf[128] = {0};
  std::string out = std::fgets(buf, sizeof buf, p) ? std::string(buf) : "";
  pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

void verify(const VerifyCli& o) {
  LoadedModel m = load(o.model);
  Tokenizer tok(m.tokenizer);
  const int threads = resolve_threads(o.model.threads);
  VerifyOptions vo;
  vo.prompts = load_prompts(o, tok, m.config.max_context);
  vo.max_tokens = o.max_tokens;
  vo.trials = o.trials;
  vo.kv_bytes = o.kv_mb << 20;
  if (o.quick) {
    vo.batch_others = {1, 7};
    vo.chunks = {1, 7, 64};
    vo.prefix_lengths = {1, 15, 16, 17};
    vo.sampling = false;
  } else {
    vo.batch_others = {1, 7, 31, 255};
  }
  if (o.long_prompt)  // the long prompt is there for these (prompts shorter than a length skip it)
    for (int64_t len : {511, 2048, 4097})
      if (std::find(vo.prefix_lengths.begin(), vo.prefix_lengths.end(), len) == vo.prefix_lengths.end())
        vo.prefix_lengths.push_back(len);
  const std::string device = resolve_device(o.model);
  const bool det = o.model.deterministic();  // off: shows what the promises cost to break
  OpsFactory make_ops = [device, det](int t) { return cli::make_ops(device, t, det); };

  // The reference outputs of every prompt, alone, greedy and sampled: hashed for the
  // two-process check.
  auto reference_digest = [&] {
    std::vector<RequestResult> all;
    for (const auto& prompt : vo.prompts) {
      for (float temp : {0.0f, 0.8f}) {
        auto ops = make_ops(threads);
        EngineOptions e;
        e.kv_bytes_default = vo.kv_bytes;
        Engine engine(m.config, m.weights, &tok, *ops, e);
        Request r;
        r.prompt = prompt;
        r.params.max_tokens = o.max_tokens;
        r.params.temperature = temp;
        r.params.seed = 99;
        r.params.ignore_eos = true;
        all.push_back(engine.generate({r})[0]);
      }
    }
    return digest(all);
  };
  if (o.child_digest) {
    std::printf("%s\n", reference_digest().c_str());
    return;
  }

  std::printf("verify %s on %s: %zu prompt(s), %d tokens each, %d threads\n", m.path.c_str(), device.c_str(),
              vo.prompts.size(), o.max_tokens, threads);
  std::printf("%-4s %-30s %-28s %-6s %s\n", "test", "setting", "sampling", "prompt", "result");
  int failures = 0, total = 0;
  auto print = [&](const VerifyCase& c) {
    ++total;
    if (!c.identical) ++failures;
    std::printf("%-4s %-30s %-28s %-6d %s\n", c.test.c_str(), c.setting.c_str(), c.sampling.c_str(), c.prompt,
                c.identical ? c.detail.c_str() : ("DIFFERENT: " + c.detail).c_str());
    std::fflush(stdout);
  };
  run_verify(m.config, m.weights, &tok, make_ops, threads, vo, print);

  VerifyCase pc;
  pc.test = "T7";
  pc.setting = "two processes";
  pc.sampling = "greedy, t=0.8";
  const std::string mine = reference_digest(), theirs = child_digest(o, m.path);
  pc.identical = mine == theirs;
  pc.detail = pc.identical ? cat("identical (digest ", mine, ")") : cat("digests ", mine, " vs '", theirs, "'");
  print(pc);

  std::printf("%d passed, %d failed\n", total - failures, failures);
  if (failures) fail(failures, " of ", total, " verify cases differ");
}

}  // namespace

void add_verify(CLI::App& app) {
  auto o = std::make_shared<VerifyCli>();
  auto* cmd = app.add_subcommand("verify", "check the determinism promises (T2-T7, T10) end to end on this model");
  o->model.add(cmd);
  cmd->add_option("--prompts", o->prompts_file, "file with one prompt per line (default: built-in prompts)");
  cmd->add_flag("--quick", o->quick, "fewer cases: one prompt, greedy only");
  cmd->add_flag("--long", o->long_prompt, "add a ~4200-token prompt (prefix-cache lengths 2048 and 4097)");
  cmd->add_option("--max-tokens", o->max_tokens, "tokens generated per case")->check(CLI::Range(1, 4096));
  cmd->add_option("--trials", o->trials, "T10: runs of the same request in the batch setting")->check(CLI::Range(1, 1000));
  cmd->add_option("--kv-mb", o->kv_mb, "KV cache size in MiB")->check(CLI::Range(1, 1 << 20));
  cmd->add_flag("--child-digest", o->child_digest, "(internal) print the reference digest")->group("");
  cmd->callback([o] { verify(*o); });
}

}  // namespace detinfer::cli
