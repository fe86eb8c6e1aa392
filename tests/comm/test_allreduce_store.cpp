// The bootstrap store (loopback only) and the all-reduce library's environment parsing.
#include <gtest/gtest.h>

#include <cstdlib>
#include <thread>

#include "comm/allreduce.h"
#include "comm/store.h"
#include "common/error.h"

using namespace detinfer::comm;

TEST(AllreduceStore, SetGetAddBarrierAllGather) {
  StoreServer server("127.0.0.1", 0);
  ASSERT_GT(server.port(), 0);
  const int world = 4;
  std::vector<std::vector<std::vector<uint8_t>>> got(world);
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r)
    ranks.emplace_back([&, r] {
      StoreClient c("127.0.0.1", server.port(), 5000);
      got[r] = store_all_gather(c, "blob", r, world, {static_cast<uint8_t>(r), 42}, 5000);
      c.barrier("b1", world, 5000);
      c.add("counter", r + 1);
      c.barrier("b2", world, 5000);
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < world; ++r)
    for (int q = 0; q < world; ++q) EXPECT_EQ(got[r][q], (std::vector<uint8_t>{static_cast<uint8_t>(q), 42}));
  StoreClient c("127.0.0.1", server.port(), 5000);
  EXPECT_EQ(c.add("counter", 0), 1 + 2 + 3 + 4);
}

TEST(AllreduceStore, MissingKeyTimesOutWithError) {
  StoreServer server("127.0.0.1", 0);
  StoreClient c("127.0.0.1", server.port(), 5000);
  try {
    c.get("never", 50);
    FAIL() << "expected a timeout";
  } catch (const detinfer::Error& e) {
    EXPECT_NE(std::string(e.what()).find("did not appear"), std::string::npos) << e.what();
  }
}

TEST(AllreduceStore, NoServerIsAnError) {
  int port = 0;
  {
    StoreServer gone("127.0.0.1", 0);  // a port that was free a moment ago and is closed now
    port = gone.port();
  }
  EXPECT_THROW(StoreClient("127.0.0.1", port, 100), detinfer::Error);
}

TEST(AllreduceEnv, NamesParseAndReject) {
  EXPECT_EQ(parse_algo("one-shot"), Algo::OneShot);
  EXPECT_EQ(parse_algo("TwoShot"), Algo::TwoShot);
  EXPECT_EQ(parse_algo("nccl_det"), Algo::NcclDet);
  EXPECT_EQ(parse_dtype("bfloat16"), DataType::BF16);
  EXPECT_EQ(parse_order("tp"), Order::Tree);
  EXPECT_THROW(parse_algo("fastest"), detinfer::Error);
  EXPECT_THROW(parse_dtype("f64"), detinfer::Error);
  for (Algo a : {Algo::Auto, Algo::OneShot, Algo::TwoShot, Algo::NcclDet, Algo::Nccl}) EXPECT_EQ(parse_algo(algo_name(a)), a);
}

TEST(AllreduceEnv, OptionsAndBootstrapFromEnvironment) {
  setenv("DETINFER_AR_ALGO", "twoshot", 1);
  setenv("DETINFER_AR_TIMEOUT_MS", "250", 1);
  setenv("DETINFER_AR_SLOT_KB", "32", 1);
  Options o = Options::from_env();
  EXPECT_EQ(o.algo, Algo::TwoShot);
  EXPECT_EQ(o.timeout_ms, 250);
  EXPECT_EQ(o.slot_bytes, 32 * 1024);
  setenv("DETINFER_AR_TIMEOUT_MS", "soon", 1);
  EXPECT_THROW(Options::from_env(), detinfer::Error);
  unsetenv("DETINFER_AR_ALGO");
  unsetenv("DETINFER_AR_TIMEOUT_MS");
  unsetenv("DETINFER_AR_SLOT_KB");

  unsetenv("RANK");
  unsetenv("WORLD_SIZE");
  unsetenv("OMPI_COMM_WORLD_SIZE");
  EXPECT_THROW(bootstrap_from_env(), detinfer::Error);
  setenv("RANK", "1", 1);
  setenv("WORLD_SIZE", "2", 1);
  setenv("LOCAL_RANK", "1", 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", "29555", 1);
  Bootstrap b = bootstrap_from_env();
  EXPECT_EQ(b.rank, 1);
  EXPECT_EQ(b.world_size, 2);
  EXPECT_EQ(b.master_port, 29555);
  setenv("RANK", "2", 1);  // rank outside the world
  EXPECT_THROW(bootstrap_from_env(), detinfer::Error);
  for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}) unsetenv(v);
}
