#include "common/thread_pool.h"

#include <chrono>

#include "common/error.h"

namespace detinfer {

namespace {

// The pool whose job this thread is running (workers always; the caller while it runs ranges),
// so that a nested parallel_for runs inline instead of waiting for itself.
thread_local const ThreadPool* tls_running_pool = nullptr;

// How long a worker spins for the next job before sleeping, and a caller for its workers: long
// enough to cover the serial gaps of a forward pass, short because the machine may be shared.
// The spin yields now and then, so that on an oversubscribed machine it gives way to the
// threads it waits for.
constexpr auto kSpin = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until pred() or kSpin has passed; returns pred().
template <typename Pred>
bool spin_until(Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (int i = 1;; ++i) {
    if (pred()) return true;
    if ((i & 15) == 0) {
      if (std::chrono::steady_clock::now() > deadline) return pred();
      std::this_thread::yield();
    } else {
      cpu_relax();
    }
  }
}

constexpr uint64_t ticket(uint32_t generation, uint32_t next) {
  return (static_cast<uint64_t>(generation) << 32) | next;
}

}  // namespace

int ThreadPool::default_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads) {
  DETINFER_CHECK(n_threads >= 1, "ThreadPool: thread count must be at least 1, got ", n_threads);
  // No job yet: the ticket says every range of generation 0 is taken.
  ticket_.store(ticket(0, static_cast<uint32_t>(n_threads)));
  workers_.reserve(n_threads - 1);
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::run_range(int index) {
  const auto [b, e] = range(n_, index, n_threads_);
  if (b < e) {
    try {
      body_(ctx_, b, e);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
  if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_threads_) {
    std::lock_guard<std::mutex> lock(done_mutex_);  // pairs with the caller's wait
    done_cv_.notify_one();
  }
}

void ThreadPool::help() {
  uint64_t t = ticket_.load(std::memory_order_acquire);
  for (;;) {
    const uint32_t next = static_cast<uint32_t>(t);
    if (next >= static_cast<uint32_t>(n_threads_)) return;
    // A successful exchange claims range `next` of the job whose fields the acquire made visible;
    // they cannot change before that range is done.
    if (ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
      run_range(static_cast<int>(next));
      t = ticket_.load(std::memory_order_acquire);
    }
  }
}

void ThreadPool::worker() {
  tls_running_pool = this;
  uint64_t seen = 0;  // the constructor's generation: a job published before we got here is new
  auto has_job = [&] { return (ticket_.load(std::memory_order_acquire) >> 32) != seen; };
  for (;;) {
    if (!spin_until(has_job)) {
      std::unique_lock<std::mutex> lock(mutex_);
      ++sleepers_;
      wake_.wait(lock, [&] { return stop_ || has_job(); });
      --sleepers_;
      if (stop_) return;
    }
    seen = ticket_.load(std::memory_order_acquire) >> 32;
    help();
  }
}

void ThreadPool::run(int64_t n, Body body, void* ctx) {
  if (n <= 0) return;
  if (n_threads_ == 1 || n == 1 || tls_running_pool == this) {
    body(ctx, 0, n);
    return;
  }
  std::lock_guard<std::mutex> call_lock(call_mutex_);
  body_ = body;
  ctx_ = ctx;
  n_ = n;
  error_ = nullptr;
  done_.store(0, std::memory_order_relaxed);
  bool notify;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ticket_.store(ticket(++generation_, 0), std::memory_order_release);
    notify = sleepers_ > 0;
  }
  if (notify) wake_.notify_all();

  const ThreadPool* outer = std::exchange(tls_running_pool, this);
  help();
  tls_running_pool = outer;

  auto all_done = [&] { return done_.load(std::memory_order_acquire) == n_threads_; };
  if (!spin_until(all_done)) {
    std::unique_lock<std::mutex> lock(done_mutex_);
    done_cv_.wait(lock, all_done);
  }
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

}  // namespace detinfer
