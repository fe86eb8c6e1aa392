#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/thread_pool.h"

namespace detinfer {
namespace {

TEST(ThreadPool, RejectsZeroThreads) {
  EXPECT_THROW(ThreadPool(0), Error);
  EXPECT_THROW(ThreadPool(-2), Error);
  EXPECT_GE(ThreadPool::default_threads(), 1);
  ThreadPool p;
  EXPECT_EQ(p.n_threads(), ThreadPool::default_threads());
}

// Every index once, in the documented static ranges, each range on one call of fn.
TEST(ThreadPool, StaticContiguousPartition) {
  for (int T : {1, 2, 3, 4, 8}) {
    ThreadPool pool(T);
    EXPECT_EQ(pool.n_threads(), T);
    for (int64_t n : {0, 1, 2, 3, 5, 7, 8, 100, 1001}) {
      std::mutex mu;
      std::vector<std::pair<int64_t, int64_t>> ranges;
      std::vector<int> hits(static_cast<size_t>(n), 0);
      pool.parallel_for(n, [&](int64_t b, int64_t e) {
        std::lock_guard<std::mutex> lock(mu);
        ranges.emplace_back(b, e);
        for (int64_t i = b; i < e; ++i) ++hits[i];
      });
      for (int h : hits) ASSERT_EQ(h, 1) << "T=" << T << " n=" << n;
      std::set<std::pair<int64_t, int64_t>> expected;
      if (n == 1 || T == 1) {
        if (n > 0) expected.insert({0, n});  // small loops run inline as one range
      } else {
        for (int i = 0; i < T; ++i) {
          const auto r = ThreadPool::range(n, i, T);
          if (r.first < r.second) expected.insert(r);
        }
      }
      const std::set<std::pair<int64_t, int64_t>> got(ranges.begin(), ranges.end());
      EXPECT_EQ(got, expected) << "T=" << T << " n=" << n;
      EXPECT_EQ(ranges.size(), expected.size());
    }
  }
}

// The ranges of one call run concurrently: each waits until all have started.
TEST(ThreadPool, RangesRunConcurrentlyOnDifferentThreads) {
  ThreadPool pool(3);
  std::mutex mu;
  std::set<std::thread::id> ids;
  std::atomic<int> started{0};
  bool all_met = true;
  pool.parallel_for(3, [&](int64_t, int64_t) {
    ++started;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (started.load() < 3 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::yield();
    std::lock_guard<std::mutex> lock(mu);
    all_met = all_met && started.load() == 3;
    ids.insert(std::this_thread::get_id());
  });
  EXPECT_TRUE(all_met);
  EXPECT_EQ(ids.size(), 3u);
}

TEST(ThreadPool, ManyShortCallsAndSleepingWorkers) {
  ThreadPool pool(3);
  for (int round = 0; round < 3; ++round) {
    for (int call = 0; call < 20000; ++call) {
      std::atomic<int64_t> sum{0};
      pool.parallel_for(10, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) sum += i;
      });
      ASSERT_EQ(sum.load(), 45) << "call " << call;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // workers go to sleep
  }
}

TEST(ThreadPool, PropagatesExceptionsAndStaysUsable) {
  ThreadPool pool(4);
  EXPECT_THROW(pool.parallel_for(100,
                                 [&](int64_t b, int64_t) {
                                   if (b >= 50) throw std::runtime_error("boom");
                                 }),
               std::runtime_error);
  EXPECT_THROW(pool.parallel_for(100, [&](int64_t, int64_t) { throw Error("every range"); }),
               Error);
  std::atomic<int64_t> count{0};
  pool.parallel_for(100, [&](int64_t b, int64_t e) { count += e - b; });
  EXPECT_EQ(count.load(), 100);
}

TEST(ThreadPool, NestedCallsRunInline) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  pool.parallel_for(6, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      pool.parallel_for(10, [&](int64_t b2, int64_t e2) { total += e2 - b2; });
  });
  EXPECT_EQ(total.load(), 60);
}

TEST(ThreadPool, ConcurrentCallersTakeTurns) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c)
    callers.emplace_back([&] {
      for (int i = 0; i < 2000; ++i)
        pool.parallel_for(7, [&](int64_t b, int64_t e) { total += e - b; });
    });
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(total.load(), 3 * 2000 * 7);
}

}  // namespace
}  // namespace detinfer
