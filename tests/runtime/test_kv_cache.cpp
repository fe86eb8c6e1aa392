#include <gtest/gtest.h>

#include <numeric>

#include "common/error.h"
#include "runtime/kv_cache.h"

using namespace detinfer;

TEST(KvBlockPool, AllocatesEveryBlockOnceThenRunsOut) {
  KvBlockPool pool(4, 16, false);
  std::vector<int32_t> got;
  for (int i = 0; i < 4; ++i) got.push_back(pool.allocate());
  EXPECT_EQ(pool.allocate(), -1);
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 2, 3}));
  pool.release(got[2]);
  EXPECT_EQ(pool.available(), 1);
  EXPECT_EQ(pool.allocate(), got[2]);
}

TEST(KvBlockPool, ReleasingAFreeBlockIsAnError) {
  KvBlockPool pool(2, 4, false);
  int32_t b = pool.allocate();
  pool.release(b);
  EXPECT_THROW(pool.release(b), Error);
  EXPECT_THROW(pool.release(7), Error);
}

TEST(KvBlockPool, PrefixCacheReturnsPublishedFullBlocksOnly) {
  const int B = 4;
  KvBlockPool pool(8, B, true);
  std::vector<int32_t> tokens(11);
  std::iota(tokens.begin(), tokens.end(), 100);
  int32_t b0 = pool.allocate(), b1 = pool.allocate(), b2 = pool.allocate();
  pool.publish(b0, tokens, 0);
  pool.publish(b1, tokens, 1);
  // b2 holds positions 8..10 only: not full, never published.
  std::vector<int32_t> hit = pool.acquire_prefix(tokens, 100);
  EXPECT_EQ(hit, (std::vector<int32_t>{b0, b1}));
  // max_tokens limits the hit to whole blocks within it.
  EXPECT_EQ(pool.acquire_prefix(tokens, 7), (std::vector<int32_t>{b0}));
  // A prompt that differs in block 1 gets block 0 only.
  std::vector<int32_t> other = tokens;
  other[5] = 1;
  EXPECT_EQ(pool.acquire_prefix(other, 100), (std::vector<int32_t>{b0}));
  // The same second block after a different first block is a different prefix.
  std::vector<int32_t> shifted = tokens;
  shifted[0] = 7;
  EXPECT_TRUE(pool.acquire_prefix(shifted, 100).empty());
  (void)b2;
}

TEST(KvBlockPool, CachedBlocksAreEvictedLeastRecentlyUsedFirst) {
  const int B = 2;
  KvBlockPool pool(3, B, true);
  std::vector<int32_t> a = {1, 2}, b = {3, 4}, c = {5, 6};
  int32_t ba = pool.allocate(), bb = pool.allocate(), bc = pool.allocate();
  pool.publish(ba, a, 0), pool.publish(bb, b, 0), pool.publish(bc, c, 0);
  pool.release(ba), pool.release(bb), pool.release(bc);  // all unreferenced, still cached
  EXPECT_EQ(pool.available(), 3);
  EXPECT_EQ(pool.cached_blocks(), 3);
  // Using `a` again makes `b` the oldest.
  auto hit = pool.acquire_prefix(a, 2);
  ASSERT_EQ(hit.size(), 1u);
  pool.release(hit[0]);
  EXPECT_EQ(pool.allocate(), bb);
  EXPECT_TRUE(pool.acquire_prefix(b, 2).empty());
  EXPECT_EQ(pool.acquire_prefix(c, 2).size(), 1u);
}

TEST(KvBlockPool, ReferencedCachedBlocksAreNotEvicted) {
  KvBlockPool pool(1, 2, true);
  std::vector<int32_t> a = {1, 2};
  int32_t b = pool.allocate();
  pool.publish(b, a, 0);
  EXPECT_EQ(pool.allocate(), -1);  // still referenced by its writer
  pool.release(b);
  auto hit = pool.acquire_prefix(a, 2);
  EXPECT_EQ(hit.size(), 1u);
  EXPECT_EQ(pool.allocate(), -1);  // referenced by the hit
}
