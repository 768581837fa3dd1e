// ESPnet's location convolution as an op of its own (LocationConvParams in params.h), compiled
// once per ISA, for the classes whose location features do not feed the fused step: AttLocRec
// (features max-pooled into an LSTM) and the attention window of AttLoc-style steps. The tiles
// are the fused step's (cpu/location_conv.h). NumPy's im2col + matmul took 447 us for N = 10,
// T = 200, K = 201, C = 10 at 2 threads, about 3 M multiply-adds.
#include <algorithm>
#include <atomic>
#include <new>

#include "attnkit/parallel.h"
#include "attnkit/params.h"
#include "cpu/arena.h"
#include "cpu/isa.h"
#include "cpu/location_conv.h"
#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {
namespace {

template <typename T>
void run(const LocationConvParams& p) {
  constexpr int W = lanes<T>();
  const int64_t T_pad = (p.T + kConvVecs * W + W - 1) / W * W;
  const LocationConv<T> conv{static_cast<const T*>(p.w), p.C, p.R, p.K, p.T, T_pad};
  const T* x = static_cast<const T*>(p.x);
  T* f = static_cast<T*>(p.f);
  ScratchLayout lay;
  const std::size_t off_pad = lay.add<T>(std::max<int64_t>(p.R, 1) * conv.pad_width());
  const std::size_t off_f = lay.add<T>(p.C * T_pad);
  const std::size_t bytes = lay.bytes();
  std::atomic<bool> out_of_memory{false};
  auto rows = [&](int64_t, int64_t n0, int64_t n1) {
    void* base = thread_scratch(bytes);
    if (!base) {
      out_of_memory.store(true);
      return;
    }
    T *pad = at<T>(base, off_pad), *fr = at<T>(base, off_f);
    for (int64_t n = n0; n < n1; ++n) {
      conv.pad_input(x + n * p.R * p.T, pad);
      conv.features(pad, 0, p.T, fr);
      for (int64_t c = 0; c < p.C; ++c) std::copy(fr + c * T_pad, fr + c * T_pad + p.T, f + (n * p.C + c) * p.T);
    }
  };
  // ~1 multiply-add per cycle and lane: threads from ~2^18 multiply-adds (~10 us) on.
  if (p.N > 1 && double(p.N) * double(p.C * p.R) * double(p.K * p.T) >= double(1 << 18))
    parallel_for(p.N, rows);
  else
    rows(0, 0, p.N);
  if (out_of_memory.load()) throw std::bad_alloc();
}

}  // namespace

void location_conv(const LocationConvParams& p) {
  if (p.dtype == DType::f32)
    run<float>(p);
  else
    run<double>(p);
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
