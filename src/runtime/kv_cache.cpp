#include "runtime/kv_cache.h"

#include <algorithm>

#include "common/error.h"

namespace detinfer {

KvBlockPool::KvBlockPool(int64_t num_blocks, int block_size, bool prefix_cache)
    : num_blocks_(num_blocks), block_size_(block_size), prefix_cache_(prefix_cache) {
  DETINFER_CHECK(num_blocks > 0 && num_blocks < (int64_t{1} << 31), "KV cache: bad block count ",
                 num_blocks);
  DETINFER_CHECK(block_size > 0, "KV cache: bad block size ", block_size);
  free_.reserve(num_blocks);
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
  refs_.assign(num_blocks, 0);
}

uint64_t KvBlockPool::chain_key(uint64_t parent, std::span<const int32_t> block_tokens) const {
  // FNV-1a over the parent key and the tokens, then a splitmix finaliser.
  uint64_t h = 1469598103934665603ull ^ parent;
  auto mix = [&h](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  for (int32_t t : block_tokens) mix(static_cast<uint32_t>(t));
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ull;
  return h ^ (h >> 29);
}

void KvBlockPool::touch(int32_t block) {
  auto it = lru_pos_.find(block);
  if (it != lru_pos_.end()) {
    lru_.erase(it->second);
    lru_pos_.erase(it);
    --evictable_;
  }
}

std::vector<int32_t> KvBlockPool::acquire_prefix(std::span<const int32_t> tokens, int64_t max_tokens) {
  std::vector<int32_t> out;
  if (!prefix_cache_) return out;
  uint64_t parent = 0;
  const int64_t n_full = std::min<int64_t>(max_tokens, static_cast<int64_t>(tokens.size())) / block_size_;
  for (int64_t i = 0; i < n_full; ++i) {
    auto bt = tokens.subspan(i * block_size_, block_size_);
    uint64_t key = chain_key(parent, bt);
    auto it = block_of_.find(key);
    if (it == block_of_.end()) break;
    const Entry& e = entry_of_.at(key);
    if (e.parent != parent || !std::equal(bt.begin(), bt.end(), e.tokens.begin(), e.tokens.end())) break;
    int32_t b = it->second;
    if (refs_[b] == 0) touch(b);
    ++refs_[b];
    out.push_back(b);
    parent = key;
  }
  return out;
}

int32_t KvBlockPool::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    b = lru_.front();  // evict the least recently used cached block
    touch(b);
    uint64_t key = key_of_.at(b);
    block_of_.erase(key);
    entry_of_.erase(key);
    key_of_.erase(b);
  } else {
    return -1;
  }
  refs_[b] = 1;
  return b;
}

void KvBlockPool::release(int32_t block) {
  DETINFER_CHECK(block >= 0 && block < num_blocks_ && refs_[block] > 0, "KV cache: bad release of block ",
                 block);
  if (--refs_[block] > 0) return;
  if (key_of_.count(block)) {  // stays cached until evicted
    lru_.push_back(block);
    lru_pos_[block] = std::prev(lru_.end());
    ++evictable_;
  } else {
    free_.push_back(block);
  }
}

void KvBlockPool::publish(int32_t block, std::span<const int32_t> tokens, int64_t index) {
  if (!prefix_cache_ || key_of_.count(block)) return;
  uint64_t parent = 0;
  for (int64_t i = 0; i <= index; ++i) {
    auto bt = tokens.subspan(i * block_size_, block_size_);
    uint64_t key = chain_key(parent, bt);
    if (i == index) {
      if (block_of_.count(key)) return;  // the same prefix is cached in another block
      block_of_[key] = block;
      key_of_[block] = key;
      entry_of_[key] = Entry{parent, std::vector<int32_t>(bt.begin(), bt.end())};
      return;
    }
    parent = key;
  }
}

}  // namespace detinfer
