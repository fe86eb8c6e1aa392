// A fixed set of persistent worker threads for data-parallel loops. parallel_for splits [0, n)
// statically into T contiguous ranges, range i = [n·i/T, n·(i+1)/T), each run whole by one
// thread. The split never depends on timing, and kernels keep every reduction inside one output
// element, so results are the same for any thread count. Which thread runs a range is decided at
// run time (the caller and the workers claim ranges in turn), so that on a busy machine a worker
// that is not scheduled does not stall the call: the caller runs its range instead.
// Workers spin briefly after a call (the forward pass calls in bursts), then sleep.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace detinfer {

class ThreadPool {
 public:
  // std::thread::hardware_concurrency(), at least 1.
  static int default_threads();

  // n_threads >= 1 (throws Error otherwise); 1 runs every loop inline on the caller.
  explicit ThreadPool(int n_threads = default_threads());
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int n_threads() const { return n_threads_; }

  // Calls fn(begin, end) on each non-empty range of the static split of [0, n) and returns when
  // all are done. An exception thrown by fn is rethrown here (the first one, if several). Calls
  // from inside fn, and concurrent calls from several threads, are safe: a nested call runs
  // inline, concurrent callers take turns.
  template <typename F>
  void parallel_for(int64_t n, F&& fn) {
    using Fn = std::remove_reference_t<F>;
    run(
        n, [](void* ctx, int64_t b, int64_t e) { (*static_cast<Fn*>(ctx))(b, e); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }

  // Range i of the T ranges parallel_for(n, ...) splits [0, n) into.
  static std::pair<int64_t, int64_t> range(int64_t n, int i, int T) {
    return {n * i / T, n * (i + 1) / T};
  }

 private:
  using Body = void (*)(void* ctx, int64_t begin, int64_t end);
  void run(int64_t n, Body body, void* ctx);
  void worker();
  void help();  // claims and runs ranges of the current job until none is left
  void run_range(int index);

  const int n_threads_;
  std::vector<std::thread> workers_;

  std::mutex call_mutex_;  // one parallel_for at a time

  // The current job. Written by the caller before it publishes a new ticket, read by whoever
  // claims one of the job's ranges; constant until all ranges are done.
  Body body_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  std::exception_ptr error_;
  std::mutex error_mutex_;

  // ticket_ = (generation << 32) | next unclaimed range. Claiming is a compare-exchange, so a
  // range is claimed once, and only within its own job.
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int> done_{0};  // ranges of the current job finished
  uint32_t generation_ = 0;   // caller side

  std::mutex mutex_;  // sleeping workers
  std::condition_variable wake_;
  int sleepers_ = 0;
  bool stop_ = false;
  std::mutex done_mutex_;  // a sleeping caller
  std::condition_variable done_cv_;
};

}  // namespace detinfer
