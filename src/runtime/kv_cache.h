// Paged KV cache bookkeeping (the memory itself belongs to the backend): fixed-size blocks,
// reference counts, and a prefix cache of full blocks keyed by their tokens and everything
// before them. A sequence that hits the cache reads the shared blocks and writes only blocks of
// its own, which start at a block boundary, so shared blocks are never written.
#pragma once
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

namespace detinfer {

class KvBlockPool {
 public:
  KvBlockPool(int64_t num_blocks, int block_size, bool prefix_cache);

  int block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  // Blocks a new allocation can get: free ones plus cached ones no sequence uses (evictable).
  int64_t available() const { return static_cast<int64_t>(free_.size()) + evictable_; }

  // Longest run of cached full blocks that prefixes `tokens`, covering at most max_tokens tokens;
  // takes a reference on each. Returns their ids (the first len*block_size tokens are cached).
  std::vector<int32_t> acquire_prefix(std::span<const int32_t> tokens, int64_t max_tokens);
  // A fresh block (refcount 1), evicting the least recently used unreferenced cached block when no
  // block is free. Returns -1 when none is left.
  int32_t allocate();
  void release(int32_t block);
  // Registers block `index` of a sequence (its tokens[0 .. (index+1)*block_size) are all written)
  // in the prefix cache. No-op if caching is off or an identical block is cached already.
  void publish(int32_t block, std::span<const int32_t> tokens, int64_t index);

  int64_t cached_blocks() const { return static_cast<int64_t>(key_of_.size()); }

 private:
  uint64_t chain_key(uint64_t parent, std::span<const int32_t> block_tokens) const;
  void touch(int32_t block);

  int64_t num_blocks_;
  int block_size_;
  bool prefix_cache_;
  std::vector<int32_t> free_;
  std::vector<int32_t> refs_;
  int64_t evictable_ = 0;
  std::unordered_map<uint64_t, int32_t> block_of_;  // chain key -> block
  std::unordered_map<int32_t, uint64_t> key_of_;    // block -> chain key
  std::list<int32_t> lru_;                          // unreferenced cached blocks, oldest first
  std::unordered_map<int32_t, std::list<int32_t>::iterator> lru_pos_;
  // What a key stands for, checked on every hit so a hash collision cannot alias two prefixes:
  // the parent block's key and the block's own tokens.
  struct Entry {
    uint64_t parent;
    std::vector<int32_t> tokens;
  };
  std::unordered_map<uint64_t, Entry> entry_of_;
};

}  // namespace detinfer
