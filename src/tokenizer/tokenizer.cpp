#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <climits>
#include <optional>
#include <queue>
#include <unordered_map>

#include "common/error.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode.h"

namespace detinfer {

// ---- byte-level alphabet (GPT-2 bytes_to_unicode) ----

namespace {
struct ByteTables {
  std::array<uint32_t, 256> to_unicode{};
  std::array<int16_t, 324> from_unicode{};  // code points 0..323 -> byte, -1 if none
  ByteTables() {
    from_unicode.fill(-1);
    uint32_t extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_unicode[b] = printable ? static_cast<uint32_t>(b) : extra++;
      from_unicode[to_unicode[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteTables kBytes;
}  // namespace

uint32_t byte_to_unicode(uint8_t b) { return kBytes.to_unicode[b]; }

std::string byte_level_encode(std::string_view raw) {
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char b : raw) append_utf8(out, kBytes.to_unicode[b]);
  return out;
}

std::string byte_level_decode(std::string_view token) {
  std::string out;
  const auto* s = reinterpret_cast<const unsigned char*>(token.data());
  for (size_t i = 0; i < token.size();) {
    uint32_t cp;
    i += decode_utf8(s + i, token.size() - i, cp);
    if (cp >= kBytes.from_unicode.size() || kBytes.from_unicode[cp] < 0) return std::string(token);
    out += static_cast<char>(kBytes.from_unicode[cp]);
  }
  return out;
}

// ---- pre-tokenizer names ----

const char* pre_tokenizer_name(PreTokenizer p) {
  switch (p) {
    case PreTokenizer::Gpt2: return "gpt2";
    case PreTokenizer::Llama3: return "llama3";
    case PreTokenizer::Qwen2: return "qwen2";
    case PreTokenizer::SmolLM: return "smollm";
  }
  return "?";
}

PreTokenizer pre_tokenizer_from_gguf(std::string_view pre) {
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" || pre == "falcon3" || pre == "pixtral")
    return PreTokenizer::Llama3;
  if (pre == "qwen2" || pre == "deepseek-r1-qwen") return PreTokenizer::Qwen2;
  if (pre == "smollm") return PreTokenizer::SmolLM;
  if (pre == "gpt-2" || pre == "gpt2" || pre == "phi-2") return PreTokenizer::Gpt2;
  fail("tokenizer.ggml.pre '", pre, "' is not supported (supported: llama-bpe, qwen2, smollm, gpt-2)");
}

bool gguf_pre_ignores_merges(std::string_view pre) {
  return pre_tokenizer_from_gguf(pre) == PreTokenizer::Llama3;
}

// ---- implementation ----

namespace {

// (left id, right id) -> (rank, merged id): open addressing, linear probing.
class MergeTable {
 public:
  struct Hit {
    int32_t rank, id;
  };
  void init(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, Slot{kEmpty, 0, 0});
    mask_ = cap - 1;
  }
  bool insert(int32_t a, int32_t b, int32_t rank, int32_t id) {
    const uint64_t key = pack(a, b);
    for (size_t i = hash(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return false;  // duplicate merge: keep the first (lowest rank)
      if (slots_[i].key == kEmpty) {
        slots_[i] = Slot{key, rank, id};
        return true;
      }
    }
  }
  Hit find(int32_t a, int32_t b) const {
    const uint64_t key = pack(a, b);
    for (size_t i = hash(key);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == key) return {s.rank, s.id};
      if (s.key == kEmpty) return {INT32_MAX, -1};
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key;
    int32_t rank, id;
  };
  static uint64_t pack(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  size_t hash(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 40) & mask_; }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Added tokens, matched leftmost-longest (as HF's Aho-Corasick pass does) with a byte trie.
class AddedMatcher {
 public:
  void add(std::string_view content, int32_t id, bool special) {
    if (content.empty()) return;
    first_byte_[static_cast<unsigned char>(content[0])] = true;
    uint32_t node = 0;
    for (unsigned char c : content) {
      uint32_t next = child(node, c);
      if (next == 0) {
        next = static_cast<uint32_t>(nodes_.size());
        nodes_.push_back(Node{});
        nodes_[node].children.push_back({c, next});
      }
      node = next;
    }
    if (nodes_[node].id < 0) nodes_[node] = Node{id, special, std::move(nodes_[node].children)};
  }
  bool empty() const { return nodes_.size() == 1; }
  // The longest added token starting at text[i] (special ones only if parse_special).
  std::optional<std::pair<size_t, int32_t>> match(std::string_view text, size_t i, bool parse_special) const {
    if (!first_byte_[static_cast<unsigned char>(text[i])]) return std::nullopt;
    std::optional<std::pair<size_t, int32_t>> best;
    uint32_t node = 0;
    for (size_t j = i; j < text.size(); ++j) {
      node = child(node, static_cast<unsigned char>(text[j]));
      if (node == 0) break;
      const Node& n = nodes_[node];
      if (n.id >= 0 && (parse_special || !n.special)) best = {j + 1 - i, n.id};
    }
    return best;
  }
  bool may_start(unsigned char c) const { return first_byte_[c]; }

 private:
  struct Node {
    int32_t id = -1;
    bool special = false;
    std::vector<std::pair<unsigned char, uint32_t>> children;
  };
  uint32_t child(uint32_t node, unsigned char c) const {
    for (const auto& [k, v] : nodes_[node].children)
      if (k == c) return v;
    return 0;
  }
  std::vector<Node> nodes_{Node{}};
  std::array<bool, 256> first_byte_{};
};

}  // namespace

struct Tokenizer::Impl {
  TokenizerSpec spec;
  std::vector<std::string> raw;           // raw bytes of each token
  std::vector<uint8_t> special;           // control token?
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> by_raw;
  std::array<int32_t, 256> byte_id{};     // single-byte tokens, -1 if missing
  MergeTable merges;
  AddedMatcher added;
  std::optional<ChatTemplate> chat;
  std::string chat_error;
  size_t heap_threshold = 48;

  void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  void bpe_array(int32_t* sym, size_t n, std::vector<int32_t>& out) const;
  void bpe_heap(const int32_t* sym, size_t n, std::vector<int32_t>& out) const;
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;
};

Tokenizer::Tokenizer(TokenizerSpec spec) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  const std::string src = spec.source.empty() ? std::string("tokenizer spec") : spec.source;
  DETINFER_CHECK(!spec.tokens.empty(), src, ": empty vocabulary");
  DETINFER_CHECK(spec.tokens.size() < static_cast<size_t>(INT32_MAX), src, ": vocabulary too large");
  const auto n = static_cast<int32_t>(spec.tokens.size());
  DETINFER_CHECK(spec.token_types.empty() || spec.token_types.size() == spec.tokens.size(), src,
                 ": token_types has ", spec.token_types.size(), " entries for ", spec.tokens.size(), " tokens");
  auto check_id = [&](int32_t id, const char* what) {
    DETINFER_CHECK(id >= -1 && id < n, src, ": ", what, " id ", id, " out of range [0, ", n, ")");
  };
  check_id(spec.bos_id, "bos");
  check_id(spec.unk_id, "unk");
  for (int32_t e : spec.eos_ids) DETINFER_CHECK(e >= 0 && e < n, src, ": eos id ", e, " out of range [0, ", n, ")");
  DETINFER_CHECK(!spec.add_bos || spec.bos_id >= 0, src, ": add_bos is set but there is no bos token");

  // Added tokens: the explicit list, then control / user-defined types not listed.
  std::vector<uint8_t> is_added(spec.tokens.size(), 0);
  for (const SpecialToken& a : spec.added) {
    DETINFER_CHECK(a.id >= 0 && a.id < n, src, ": added token '", a.content, "' has id ", a.id, " out of range");
    is_added[a.id] = 1;
  }
  for (size_t id = 0; id < spec.token_types.size(); ++id) {
    const int32_t ty = spec.token_types[id];
    if (!is_added[id] && (ty == kTokenControl || ty == kTokenUserDefined) && !spec.tokens[id].empty()) {
      spec.added.push_back(SpecialToken{spec.tokens[id], static_cast<int32_t>(id), ty == kTokenControl});
      is_added[id] = 1;
    }
  }

  m.raw.resize(spec.tokens.size());
  m.special.assign(spec.tokens.size(), 0);
  for (int32_t id = 0; id < n; ++id)
    if (!is_added[id]) m.raw[id] = byte_level_decode(spec.tokens[id]);
  for (const SpecialToken& a : spec.added) {
    m.raw[a.id] = a.content;
    m.special[a.id] = a.special ? 1 : 0;
    m.added.add(a.content, a.id, a.special);
  }
  // Raw bytes -> id; normal tokens win over added ones with the same bytes, lower ids over higher.
  m.by_raw.reserve(spec.tokens.size());
  for (int32_t id = 0; id < n; ++id)
    if (!is_added[id] && !m.raw[id].empty()) m.by_raw.emplace(m.raw[id], id);
  for (int32_t id = 0; id < n; ++id)
    if (is_added[id] && !m.raw[id].empty()) m.by_raw.emplace(m.raw[id], id);
  for (int b = 0; b < 256; ++b) {
    auto it = m.by_raw.find(std::string_view(reinterpret_cast<const char*>(&b), 1));
    m.byte_id[b] = it == m.by_raw.end() ? -1 : it->second;
  }

  // Merges: the parts and the result must all be tokens (HF refuses such a file too).
  std::unordered_map<std::string_view, int32_t> by_string;
  by_string.reserve(spec.tokens.size());
  for (int32_t id = n - 1; id >= 0; --id) by_string[spec.tokens[id]] = id;
  m.merges.init(spec.merges.size());
  std::string joined;
  for (size_t r = 0; r < spec.merges.size(); ++r) {
    const std::string& mg = spec.merges[r];
    const size_t sp = mg.size() > 1 ? mg.find(' ', 1) : std::string::npos;
    DETINFER_CHECK(sp != std::string::npos, src, ": merge ", r, " '", mg, "' is not of the form 'a b'");
    const std::string_view a(mg.data(), sp), b(mg.data() + sp + 1, mg.size() - sp - 1);
    joined.assign(a).append(b);
    const auto ia = by_string.find(a), ib = by_string.find(b), ij = by_string.find(joined);
    DETINFER_CHECK(ia != by_string.end() && ib != by_string.end() && ij != by_string.end(), src, ": merge ", r,
                   " '", mg, "' refers to a token not in the vocabulary");
    m.merges.insert(ia->second, ib->second, static_cast<int32_t>(r), ij->second);
  }

  // Chat template: resolved now, an error kept for render time (a model without one still encodes).
  const std::string bos_text = spec.bos_id >= 0 ? m.raw[spec.bos_id] : std::string();
  try {
    if (!spec.chat_format.empty())
      m.chat = ChatTemplate::from_format(chat_format_from_name(spec.chat_format), spec.chat_template, bos_text);
    else
      m.chat = ChatTemplate::from_jinja(spec.chat_template, bos_text);
  } catch (const Error& e) {
    m.chat_error = cat(src, ": ", e.what());
  }
  m.spec = std::move(spec);
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

// Merge the lowest-ranked adjacent pair (leftmost on ties) until none is left. Small pieces: an
// array of pair ranks, rescanned per merge. Large ones: a heap over a linked list. Same result.
void Tokenizer::Impl::bpe_array(int32_t* sym, size_t n, std::vector<int32_t>& out) const {
  int32_t rank[64], merged[64];
  for (size_t k = 0; k + 1 < n; ++k) {
    const MergeTable::Hit h = merges.find(sym[k], sym[k + 1]);
    rank[k] = h.rank;
    merged[k] = h.id;
  }
  while (n > 1) {
    size_t best = 0;
    for (size_t k = 1; k + 1 < n; ++k)
      if (rank[k] < rank[best]) best = k;
    if (rank[best] == INT32_MAX) break;
    sym[best] = merged[best];
    for (size_t k = best + 1; k + 1 < n; ++k) sym[k] = sym[k + 1];
    for (size_t k = best + 1; k + 2 < n; ++k) {
      rank[k] = rank[k + 1];
      merged[k] = merged[k + 1];
    }
    --n;
    if (best > 0) {
      const MergeTable::Hit h = merges.find(sym[best - 1], sym[best]);
      rank[best - 1] = h.rank;
      merged[best - 1] = h.id;
    }
    if (best + 1 < n) {
      const MergeTable::Hit h = merges.find(sym[best], sym[best + 1]);
      rank[best] = h.rank;
      merged[best] = h.id;
    }
  }
  out.insert(out.end(), sym, sym + n);
}

void Tokenizer::Impl::bpe_heap(const int32_t* sym0, size_t n, std::vector<int32_t>& out) const {
  std::vector<int32_t> sym(sym0, sym0 + n), prev(n), next(n);
  for (size_t k = 0; k < n; ++k) {
    prev[k] = static_cast<int32_t>(k) - 1;
    next[k] = k + 1 < n ? static_cast<int32_t>(k + 1) : -1;
  }
  struct Cand {
    int32_t rank, pos, left, right;  // the pair (left id at pos, right id after it) when pushed
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int32_t pos) {
    const int32_t nx = next[pos];
    if (nx < 0) return;
    const MergeTable::Hit h = merges.find(sym[pos], sym[nx]);
    if (h.rank != INT32_MAX) heap.push(Cand{h.rank, pos, sym[pos], sym[nx]});
  };
  for (size_t k = 0; k + 1 < n; ++k) push(static_cast<int32_t>(k));
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const int32_t nx = next[c.pos];
    // Stale if either side has merged since: a symbol's id changes whenever it merges.
    if (sym[c.pos] != c.left || nx < 0 || sym[nx] != c.right) continue;
    sym[c.pos] = merges.find(c.left, c.right).id;
    sym[nx] = -1;
    next[c.pos] = next[nx];
    if (next[nx] >= 0) prev[next[nx]] = c.pos;
    if (prev[c.pos] >= 0) push(prev[c.pos]);
    push(c.pos);
  }
  for (int32_t k = 0; k >= 0; k = next[k]) out.push_back(sym[k]);
}

void Tokenizer::Impl::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() == 1) {
    const int32_t id = byte_id[static_cast<unsigned char>(piece[0])];
    if (id >= 0) out.push_back(id);
    else if (spec.unk_id >= 0) out.push_back(spec.unk_id);
    return;
  }
  if (spec.ignore_merges) {
    auto it = by_raw.find(piece);
    if (it != by_raw.end()) {
      out.push_back(it->second);
      return;
    }
  }
  int32_t small[64];
  std::vector<int32_t> large;
  int32_t* sym = small;
  if (piece.size() > 64) {
    large.resize(piece.size());
    sym = large.data();
  }
  size_t n = 0;
  for (unsigned char b : piece) {
    // A byte without a token is dropped (its neighbours become adjacent), or unk, as in HF.
    const int32_t id = byte_id[b] >= 0 ? byte_id[b] : spec.unk_id;
    if (id >= 0) sym[n++] = id;
  }
  if (n == 0) return;
  if (n <= 64 && n <= heap_threshold) bpe_array(sym, n, out);
  else bpe_heap(sym, n, out);
}

void Tokenizer::Impl::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  thread_local std::vector<size_t> ends;
  ends.clear();
  pretokenize(spec.pre, text, ends);
  size_t b = 0;
  for (size_t e : ends) {
    bpe(text.substr(b, e - b), out);
    b = e;
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_bos && m.spec.add_bos) out.push_back(m.spec.bos_id);
  if (m.added.empty()) {
    m.encode_text(text, out);
    return out;
  }
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    if (!m.added.may_start(static_cast<unsigned char>(text[i]))) {
      ++i;
      continue;
    }
    const auto hit = m.added.match(text, i, parse_special);
    if (!hit) {
      ++i;
      continue;
    }
    m.encode_text(text.substr(start, i - start), out);
    out.push_back(hit->second);
    i += hit->first;
    start = i;
  }
  m.encode_text(text.substr(start), out);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  const Impl& m = *impl_;
  std::string out;
  for (int32_t id : ids) {
    DETINFER_CHECK(id >= 0 && id < vocab_size(), "decode: token id ", id, " out of range [0, ", vocab_size(), ")");
    if (skip_special && m.special[id]) continue;
    out += m.raw[id];
  }
  return out;
}

std::string Tokenizer::token_text(int32_t id) const {
  DETINFER_CHECK(id >= 0 && id < vocab_size(), "token id ", id, " out of range [0, ", vocab_size(), ")");
  return impl_->raw[id];
}

int32_t Tokenizer::token_id(std::string_view raw) const {
  auto it = impl_->by_raw.find(raw);
  return it == impl_->by_raw.end() ? -1 : it->second;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->raw.size()); }
int32_t Tokenizer::bos_id() const { return impl_->spec.bos_id; }
bool Tokenizer::add_bos() const { return impl_->spec.add_bos; }
const std::vector<int32_t>& Tokenizer::eos_ids() const { return impl_->spec.eos_ids; }
bool Tokenizer::is_eos(int32_t id) const {
  const auto& e = impl_->spec.eos_ids;
  return std::find(e.begin(), e.end(), id) != e.end();
}
bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special[id] != 0;
}
PreTokenizer Tokenizer::pre_tokenizer() const { return impl_->spec.pre; }
const TokenizerSpec& Tokenizer::spec() const { return impl_->spec; }
void Tokenizer::set_bpe_heap_threshold(size_t n) { impl_->heap_threshold = n; }

const ChatTemplate& Tokenizer::chat_template() const {
  if (!impl_->chat) throw Error(impl_->chat_error);
  return *impl_->chat;
}
void Tokenizer::set_chat_template(ChatTemplate t) { impl_->chat = std::move(t); }
std::string Tokenizer::render_chat(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const {
  return chat_template().render(msgs, add_generation_prompt);
}

// ---- streaming ----

Tokenizer::StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special)
    : tok_(&tok), skip_special_(skip_special) {}

std::string Tokenizer::StreamDecoder::push(int32_t id) {
  const Impl& m = *tok_->impl_;
  DETINFER_CHECK(id >= 0 && id < tok_->vocab_size(), "decode: token id ", id, " out of range [0, ",
                 tok_->vocab_size(), ")");
  if (skip_special_ && m.special[id]) return {};
  pending_ += m.raw[id];
  const size_t hold = incomplete_utf8_tail(pending_);
  std::string out = sanitize_utf8(std::string_view(pending_).substr(0, pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string Tokenizer::StreamDecoder::flush() {
  std::string out = sanitize_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace detinfer
