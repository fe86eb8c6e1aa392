// detinfer: one binary, one subcommand per job.
#include <cstdio>
#include <exception>

#include "cli/cli.h"
#include "common/error.h"

int main(int argc, char** argv) {
  CLI::App app{"detinfer: LLM inference with bitwise reproducible outputs"};
  app.require_subcommand(1);
  namespace c = detinfer::cli;
  c::add_info(app);
  c::add_tokenize(app);
  c::add_run(app);
  c::add_chat(app);
  c::add_verify(app);
  c::add_bench(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const detinfer::Error& e) {
    std::fprintf(stderr, "detinfer: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "detinfer: error: out of memory (try a smaller --kv-mb or batch)\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "detinfer: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
