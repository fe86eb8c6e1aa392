// Names, environment parsing and logging of the all-reduce library (CPU only).
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "comm/allreduce.h"
#include "common/error.h"

namespace detinfer::comm {
namespace {

std::string squash(const std::string& s) {
  std::string out;
  for (char c : s)
    if (c != '-' && c != '_' && c != ' ') out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  return out;
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return (v && *v) ? v : nullptr;
}

int64_t env_int(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* v = env(name);
  if (!v) return fallback;
  char* end = nullptr;
  long long x = std::strtoll(v, &end, 10);
  DETINFER_CHECK(end && *end == '\0' && x >= lo && x <= hi, "environment variable ", name, "='", v,
                 "' is not an integer in [", lo, ", ", hi, "]");
  return x;
}

bool env_bool(const char* name, bool fallback) {
  const char* v = env(name);
  if (!v) return fallback;
  std::string s = squash(v);
  if (s == "1" || s == "true" || s == "on" || s == "yes") return true;
  if (s == "0" || s == "false" || s == "off" || s == "no") return false;
  fail("environment variable ", name, "='", v, "' is not a boolean (use 0 or 1)");
}

}  // namespace

const char* dtype_name(DataType t) {
  switch (t) {
    case DataType::F32: return "f32";
    case DataType::BF16: return "bf16";
    case DataType::F16: return "f16";
  }
  return "?";
}

const char* algo_name(Algo a) {
  switch (a) {
    case Algo::Auto: return "auto";
    case Algo::OneShot: return "oneshot";
    case Algo::TwoShot: return "twoshot";
    case Algo::NcclDet: return "nccl_det";
    case Algo::Nccl: return "nccl";
  }
  return "?";
}

const char* order_name(Order o) { return o == Order::RankOrder ? "rank" : "tree"; }

DataType parse_dtype(const std::string& s) {
  std::string k = squash(s);
  if (k == "f32" || k == "fp32" || k == "float" || k == "float32") return DataType::F32;
  if (k == "bf16" || k == "bfloat16") return DataType::BF16;
  if (k == "f16" || k == "fp16" || k == "half" || k == "float16") return DataType::F16;
  fail("unknown all-reduce data type '", s, "' (use f32, bf16 or f16)");
}

Algo parse_algo(const std::string& s) {
  std::string k = squash(s);
  if (k == "auto") return Algo::Auto;
  if (k == "oneshot") return Algo::OneShot;
  if (k == "twoshot") return Algo::TwoShot;
  if (k == "nccldet" || k == "ncclbased") return Algo::NcclDet;
  if (k == "nccl") return Algo::Nccl;
  fail("unknown all-reduce algorithm '", s, "' (use auto, oneshot, twoshot, nccl_det or nccl)");
}

Order parse_order(const std::string& s) {
  std::string k = squash(s);
  if (k == "rank" || k == "rankorder" || k == "batch") return Order::RankOrder;
  if (k == "tree" || k == "tp") return Order::Tree;
  fail("unknown all-reduce order '", s, "' (use rank or tree)");
}

Options Options::from_env(Options o) {
  if (const char* v = env("DETINFER_AR_ALGO")) o.algo = parse_algo(v);
  if (const char* v = env("DETINFER_AR_ORDER")) o.order = parse_order(v);
  o.timeout_ms = env_int("DETINFER_AR_TIMEOUT_MS", o.timeout_ms, 1, int64_t(1) << 40);
  o.blocks = static_cast<int>(env_int("DETINFER_AR_BLOCKS", o.blocks, 0, 1024));
  if (env("DETINFER_AR_SLOT_KB")) o.slot_bytes = env_int("DETINFER_AR_SLOT_KB", 0, 1, 16384) * 1024;
  o.ring_depth = static_cast<int>(env_int("DETINFER_AR_RING", o.ring_depth, 0, 64));
  o.two_shot_bytes = env_int("DETINFER_AR_TWOSHOT_BYTES", o.two_shot_bytes, -1, int64_t(1) << 50);
  o.ll_bytes = env_int("DETINFER_AR_LL_BYTES", o.ll_bytes, -1, int64_t(64) << 20);
  o.p2p = env_bool("DETINFER_AR_P2P", o.p2p);
  o.nccl = env_bool("DETINFER_AR_NCCL", o.nccl);
  return o;
}

Bootstrap bootstrap_from_env() {
  Bootstrap b;
  auto need_int = [](const char* a, const char* alt, int64_t lo, int64_t hi) -> int64_t {
    const char* name = env(a) ? a : (alt && env(alt) ? alt : nullptr);
    if (!name) fail("all-reduce bootstrap: environment variable ", a, alt ? " (or " : "", alt ? alt : "", alt ? ")" : "",
                    " is not set; start the program with torchrun or mpirun, or set RANK, WORLD_SIZE, "
                    "LOCAL_RANK, MASTER_ADDR and MASTER_PORT");
    return env_int(name, 0, lo, hi);
  };
  b.world_size = static_cast<int>(need_int("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", 1, kMaxRanks));
  b.rank = static_cast<int>(need_int("RANK", "OMPI_COMM_WORLD_RANK", 0, b.world_size - 1));
  b.local_rank = env("LOCAL_RANK") || env("OMPI_COMM_WORLD_LOCAL_RANK")
                     ? static_cast<int>(need_int("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", 0, 1 << 20))
                     : b.rank;
  if (const char* a = env("MASTER_ADDR")) b.master_addr = a;
  b.master_port = static_cast<int>(env_int("MASTER_PORT", b.master_port, 1, 65535));
  b.device = static_cast<int>(env_int("DETINFER_AR_DEVICE", -1, -1, 1 << 20));
  return b;
}

bool debug_log_enabled() {
  static const bool on = [] {
    const char* lvl = env("DETINFER_LOG");
    if (lvl && (squash(lvl) == "debug" || squash(lvl) == "trace")) return true;
    return env_bool("DETINFER_AR_DEBUG", false);
  }();
  return on;
}

void debug_log(const std::string& line) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "[detinfer:allreduce] %s\n", line.c_str());
}

}  // namespace detinfer::comm
