// The one thread pool. parallel_for splits [0, n) into at most num_threads() contiguous parts, in
// a fixed way that depends only on n and the configured thread count, so results are bitwise
// reproducible for a given thread count whichever thread runs a part (or if the pool is busy with
// another caller and the parts run inline, one after the other).
#pragma once
#include <cstdint>
#include <type_traits>

namespace attnkit {

// Upper bound of the thread count (setter and ATTNKIT_NUM_THREADS): a pool is one OS thread per
// count, and asking for millions would exhaust the process.
constexpr int kMaxThreads = 1024;

int num_threads();
void set_num_threads(int n);  // 1 <= n <= kMaxThreads

// How many parts parallel_for(n, ...) will use.
int64_t parallel_parts(int64_t n);

using PartFn = void (*)(void* ctx, int64_t part, int64_t begin, int64_t end);
void parallel_for_raw(int64_t n, PartFn fn, void* ctx);

// fn(part, begin, end) runs once per part; part < parallel_parts(n). fn must not throw.
template <class F>
void parallel_for(int64_t n, F&& fn) {
  using Fn = std::remove_reference_t<F>;
  parallel_for_raw(
      n,
      [](void* ctx, int64_t part, int64_t begin, int64_t end) {
        (*static_cast<Fn*>(ctx))(part, begin, end);
      },
      const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace attnkit
