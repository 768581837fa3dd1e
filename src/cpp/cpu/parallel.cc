// A small persistent thread pool. Workers spin for a short while after each job before sleeping,
// because decoder steps arrive every few tens of microseconds and a condition-variable wake-up
// costs about as much as the step itself. The parts of a job are claimed, by the workers and by
// the caller alike, rather than bound to threads.
#include "attnkit/parallel.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ATTNKIT_CPU_RELAX() _mm_pause()
#else
#define ATTNKIT_CPU_RELAX() std::this_thread::yield()
#endif

namespace attnkit {
namespace {

int default_thread_count() {
  if (const char* env = std::getenv("ATTNKIT_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n >= 1 && n <= kMaxThreads) return static_cast<int>(n);
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

thread_local bool t_inside_pool = false;

class Pool {
 public:
  // Throws std::system_error when the OS refuses a thread, after joining those already started.
  explicit Pool(int threads) : threads_(threads) {
    try {
      for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
    } catch (...) {
      stop_workers();
      throw;
    }
  }
  ~Pool() { stop_workers(); }
  int threads() const { return threads_; }

  void run(int64_t n, int64_t parts, PartFn fn, void* ctx) {
    // One caller at a time; a second concurrent caller (or a nested call) runs its parts inline,
    // which gives the same numbers because the split does not depend on who runs it.
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (!busy.owns_lock() || t_inside_pool) {
      run_inline(n, parts, fn, ctx);
      return;
    }
    fn_ = fn;
    ctx_ = ctx;
    n_ = n;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t job = next_generation() | static_cast<uint64_t>(parts);
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      job_.store(job, std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) sleep_cv_.notify_all();
    // The caller claims parts too, so a worker that the OS has not scheduled (another library's
    // threads still spinning on the other core after their own job, say) does not hold up the
    // call: its part runs here instead. AttLoc step, N = 10, T = 200, 2 threads, right after a
    // 2-thread PyTorch op: median 1.1-1.3 ms and 95th percentile 3.9-5.2 ms with parts bound to
    // threads; 0.49-0.81 ms and 0.77-1.3 ms claimed (alone: 0.34-0.36 ms). After a NumPy matmul
    // the 95th percentile went 3.1-4.0 ms -> 0.73-1.2 ms.
    t_inside_pool = true;
    run_claimed(job);
    t_inside_pool = false;
    while (done_.load(std::memory_order_acquire) < parts) ATTNKIT_CPU_RELAX();
  }

  static void run_inline(int64_t n, int64_t parts, PartFn fn, void* ctx) {
    for (int64_t p = 0; p < parts; ++p) fn(ctx, p, p * n / parts, (p + 1) * n / parts);
  }

 private:
  // job_ packs the generation (bits 32-63), the next unclaimed part (16-31) and the part count
  // (0-15; kMaxThreads fits). A claim is one compare-exchange of the whole word, so it succeeds
  // only while that job is current: a thread that wakes after its job is over claims nothing,
  // and the job's fields cannot change under a claimed part, since the caller returns only when
  // every part is done.
  static constexpr uint64_t kPartBits = 16;
  static constexpr uint64_t kPartMask = (uint64_t{1} << kPartBits) - 1;
  static constexpr uint64_t kNextPart = uint64_t{1} << kPartBits;
  static_assert(kMaxThreads <= static_cast<int>(kPartMask), "part count must fit in its bits");
  static uint64_t generation_of(uint64_t job) { return job >> (2 * kPartBits); }

  uint64_t next_generation() const {
    return (generation_of(job_.load(std::memory_order_relaxed)) + 1) << (2 * kPartBits);
  }

  // Claims and runs parts of `job` until none is left.
  void run_claimed(uint64_t job) {
    uint64_t seen = job;
    for (;;) {
      const uint64_t part = (seen >> kPartBits) & kPartMask, parts = seen & kPartMask;
      if (generation_of(seen) != generation_of(job) || part >= parts) return;
      if (!job_.compare_exchange_weak(seen, seen + kNextPart, std::memory_order_acq_rel,
                                      std::memory_order_acquire))
        continue;
      const int64_t p = static_cast<int64_t>(part), np = static_cast<int64_t>(parts);
      fn_(ctx_, p, p * n_ / np, (p + 1) * n_ / np);
      done_.fetch_add(1, std::memory_order_release);
      seen = job_.load(std::memory_order_acquire);
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      stop_.store(true, std::memory_order_relaxed);
      job_.store(next_generation(), std::memory_order_release);
    }
    sleep_cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  void worker_loop() {
    t_inside_pool = true;
    // The generation before any job, so that a job published before this thread started is
    // still claimed.
    uint64_t seen = 0;
    for (;;) {
      uint64_t job = job_.load(std::memory_order_acquire);
      // Spin up to 200 us before sleeping: long enough to bridge the calls of one decoder step,
      // short enough not to steal a core from the NumPy/BLAS work between attnkit calls (a
      // 2.6 ms spin slowed the next matmul 1.8x on 2 cores). A pause costs 10 to 140 cycles
      // depending on the CPU, so the bound is in time, read every 64 pauses.
      const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
      for (int spin = 1; generation_of(job) == seen; ++spin) {
        ATTNKIT_CPU_RELAX();
        job = job_.load(std::memory_order_acquire);
        if (spin % 64 == 0 && std::chrono::steady_clock::now() > spin_until) break;
      }
      if (generation_of(job) == seen) {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        sleepers_.fetch_add(1, std::memory_order_acq_rel);
        sleep_cv_.wait(lock, [&] { return generation_of(job_.load(std::memory_order_acquire)) != seen; });
        sleepers_.fetch_sub(1, std::memory_order_acq_rel);
        job = job_.load(std::memory_order_acquire);
      }
      seen = generation_of(job);
      if (stop_.load(std::memory_order_relaxed)) return;
      run_claimed(job);
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;
  std::mutex sleep_mutex_;
  std::condition_variable sleep_cv_;
  std::atomic<uint64_t> job_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  PartFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
};

std::mutex g_pool_mutex;
std::shared_ptr<Pool> g_pool;
int g_threads = 0;  // configured count; the pool itself is created on first parallel use

int g_refused_threads = 0;  // a count whose threads the OS refused: not tried again

// The pool for the configured count; null when the OS refuses its threads (the caller then runs
// the parts inline: same split, same numbers, one thread).
std::shared_ptr<Pool> get_pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_threads == 0) g_threads = default_thread_count();
  if (g_threads == g_refused_threads) return nullptr;
  if (!g_pool || g_pool->threads() != g_threads) {
    g_pool.reset();
    try {
      g_pool = std::make_shared<Pool>(g_threads);
    } catch (const std::exception&) {
      g_refused_threads = g_threads;
      return nullptr;
    }
  }
  return g_pool;
}

// fork() copies only the calling thread. A child kept the parent's pool, whose workers it does
// not have: each call's parts all ran on the caller, so a forked child (multiprocessing's "fork"
// workers) computed on one thread, silently; and a mutex held by another thread of the parent at
// the fork would stay locked in the child. The handlers hold g_pool_mutex across the fork; the
// child sets the parent's pool aside, never destroyed (its destructor would join threads the
// child does not have), and its first parallel call starts a pool of its own.
std::vector<std::shared_ptr<Pool>>* g_parent_pools = nullptr;  // reachable, never freed

void before_fork() { g_pool_mutex.lock(); }
void after_fork_in_parent() { g_pool_mutex.unlock(); }
void after_fork_in_child() {
  if (g_pool) {
    if (!g_parent_pools) g_parent_pools = new std::vector<std::shared_ptr<Pool>>();
    g_parent_pools->push_back(std::move(g_pool));
  }
  g_pool_mutex.unlock();
}

const int g_fork_handlers_registered = pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);

}  // namespace

int num_threads() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_threads == 0) g_threads = default_thread_count();
  return g_threads;
}

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  g_threads = n;
}

int64_t parallel_parts(int64_t n) { return std::max<int64_t>(1, std::min<int64_t>(n, num_threads())); }

void parallel_for_raw(int64_t n, PartFn fn, void* ctx) {
  if (n <= 0) return;
  const int64_t parts = parallel_parts(n);
  if (parts == 1) {
    fn(ctx, 0, 0, n);
    return;
  }
  std::shared_ptr<Pool> pool = get_pool();
  if (pool)
    pool->run(n, parts, fn, ctx);
  else
    Pool::run_inline(n, parts, fn, ctx);
}

}  // namespace attnkit
