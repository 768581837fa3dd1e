// The attention context: weights times values summed over frames, for several rows of one
// utterance at once. Shared by the fused step (additive.cc) and the standalone op
// (weighted_sum.cc, the context of the Forward family and NoAtt):
//   out[n][e] = sum_{t < L} w[n][t] * values[b][t][e],   w [N][T], values [B][T][Ev], out [N][Ev].
// Each column's sum runs over t in order in its own accumulator, so a row's bits do not depend on
// which rows share its tile or which column range a thread takes.
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {

constexpr int kCtxRows = 5;  // register tile: up to 5 rows x 2-8 vectors of E

template <typename T>
struct WeightedSum {
  static constexpr int W = lanes<T>();
  using V = Vec<T>;
  const T* w;       // [N][T]
  const T* values;  // [B][T][Ev]
  T* out;           // [N][Ev]
  int64_t T_frames, Ev;

  // Columns [e_begin, e_end) of rows ns[0..R) of utterance b at once, so each vector of the
  // values feeds R rows; NV vectors of E per pass keep ~10 accumulators whatever R is (a single
  // row with 5-row tiles computed 5 rows' worth).
  template <int R>
  void rows(const int64_t* ns, int64_t b, int64_t L, int64_t e_begin, int64_t e_end) const {
    constexpr int NV = R >= 4 ? 2 : (R == 3 ? 3 : 8 / R);
    const T* wr[R];
    T* o[R];
    for (int r = 0; r < R; ++r) {
      wr[r] = w + ns[r] * T_frames;
      o[r] = out + ns[r] * Ev;
    }
    const T* vb = values + b * T_frames * Ev;
    int64_t e0 = e_begin;
    for (; e0 + NV * W <= e_end; e0 += NV * W) {
      V acc[R][NV] = {};
      for (int64_t t = 0; t < L; ++t) {
        V vv[NV];
        for (int v = 0; v < NV; ++v) vv[v] = load(vb + t * Ev + e0 + v * W);
        for (int r = 0; r < R; ++r) {
          const V wt = splat<T>(wr[r][t]);
          for (int v = 0; v < NV; ++v) acc[r][v] += wt * vv[v];
        }
      }
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) store(o[r] + e0 + v * W, acc[r][v]);
    }
    for (; e0 < e_end; e0 += W) {
      const int width = int(std::min<int64_t>(W, e_end - e0));
      V acc[R] = {};
      for (int64_t t = 0; t < L; ++t) {
        const V v0 = width == W ? load(vb + t * Ev + e0) : load_partial(vb + t * Ev + e0, width);
        for (int r = 0; r < R; ++r) acc[r] += splat<T>(wr[r][t]) * v0;
      }
      for (int r = 0; r < R; ++r) store_partial(o[r] + e0, acc[r], width);
    }
  }

  // Columns [e_begin, e_end) of rows ns[0..cnt) of utterance b over frames [0, L), kCtxRows at a
  // time.
  __attribute__((noinline)) void operator()(const int64_t* ns, int64_t cnt, int64_t b, int64_t L,
                                            int64_t e_begin, int64_t e_end) const {
    static_assert(kCtxRows == 5, "WeightedSum dispatches tiles of 1 to 5 rows");
    for (int64_t i = 0; i < cnt; i += kCtxRows) {
      switch (std::min<int64_t>(kCtxRows, cnt - i)) {
        case 1: rows<1>(ns + i, b, L, e_begin, e_end); break;
        case 2: rows<2>(ns + i, b, L, e_begin, e_end); break;
        case 3: rows<3>(ns + i, b, L, e_begin, e_end); break;
        case 4: rows<4>(ns + i, b, L, e_begin, e_end); break;
        default: rows<5>(ns + i, b, L, e_begin, e_end); break;
      }
    }
  }
};

}  // namespace attnkit::cpu::ATTNKIT_ISA
