// Linear layer for a handful of rows (LinearParams), compiled once per ISA. Each output is a dot
// product over K, which is contiguous in both x and w: tiles of 2 rows x 4 outputs keep 8
// independent vector accumulators, then one horizontal sum per output.
#include <algorithm>

#include "attnkit/parallel.h"
#include "attnkit/params.h"
#include "cpu/isa.h"
#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {
namespace {

template <typename T>
void linear_rows(const LinearParams& p, int64_t a0, int64_t a1) {
  constexpr int W = lanes<T>(), kR = 2, kO = 4;
  using V = Vec<T>;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int64_t kfull = p.K / W * W;
  const int ktail = int(p.K - kfull);
  // Blocks of 16 rows, outputs outer within a block: the kO weight rows of a tile stay in L1
  // across the block's row pairs, the block's rows too (16 x 384 floats = 24 KiB); the chunk of w
  // is read once per block. Rows outer re-read the whole chunk from L2 for every row pair
  // (a decoder step's [10, 384] x [384, 1024]: 5 passes over 1.5 MB).
  constexpr int64_t kRowBlock = 16;
  for (int64_t nb = 0; nb < p.N; nb += kRowBlock) {
    const int64_t nb_end = std::min(p.N, nb + kRowBlock);
    for (int64_t a = a0; a < a1; a += kO) {
      const int no = int(std::min<int64_t>(kO, a1 - a));
      const T* wr[kO];
      for (int o = 0; o < kO; ++o) wr[o] = w + (a + std::min(o, no - 1)) * p.K;
      for (int64_t n0 = nb; n0 < nb_end; n0 += kR) {
        const int nr = int(std::min<int64_t>(kR, nb_end - n0));
        V acc[kR][kO] = {};
        const T* xr[kR];
        for (int r = 0; r < kR; ++r) xr[r] = x + (n0 + std::min(r, nr - 1)) * p.K;
        for (int64_t k = 0; k < kfull; k += W) {
          V xv[kR], wv[kO];
          for (int r = 0; r < kR; ++r) xv[r] = load(xr[r] + k);
          for (int o = 0; o < kO; ++o) wv[o] = load(wr[o] + k);
          for (int r = 0; r < kR; ++r)
            for (int o = 0; o < kO; ++o) acc[r][o] += xv[r] * wv[o];
        }
        if (ktail) {
          V xv[kR], wv[kO];
          for (int r = 0; r < kR; ++r) xv[r] = load_partial(xr[r] + kfull, ktail);
          for (int o = 0; o < kO; ++o) wv[o] = load_partial(wr[o] + kfull, ktail);
          for (int r = 0; r < kR; ++r)
            for (int o = 0; o < kO; ++o) acc[r][o] += xv[r] * wv[o];
        }
        for (int r = 0; r < nr; ++r)
          for (int o = 0; o < no; ++o) y[(n0 + r) * p.A + a + o] = hsum<T>(acc[r][o]) + (bias ? bias[a + o] : T(0));
      }
    }
  }
}

}  // namespace

void linear(const LinearParams& p) {
  // Chunks of 64 outputs; a step-sized product (10 x 320 x 320) splits in 5 tasks.
  constexpr int64_t kChunk = 64;
  const int64_t chunks = (p.A + kChunk - 1) / kChunk;
  // N * A * K >= 2^17 multiply-adds, written so that the product cannot overflow.
  const bool parallel = p.N * p.A >= ((int64_t(1) << 17) + p.K - 1) / std::max<int64_t>(p.K, 1);
  auto run = [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t a0 = c * kChunk, a1 = std::min(p.A, a0 + kChunk);
      if (p.dtype == DType::f32)
        linear_rows<float>(p, a0, a1);
      else
        linear_rows<double>(p, a0, a1);
    }
  };
  if (parallel)
    parallel_for(chunks, run);
  else
    run(0, 0, chunks);
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
