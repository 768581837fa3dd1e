// ESPnet's location convolution, shared by the fused step (additive.cc) and the standalone op
// (location_conv.cc): a cross-correlation of K = 2F + 1 taps over R input rows, input frames
// outside [0, T) read as 0 (K may exceed T),
//   f[c][t] = sum_r sum_j w[c][r][j] * att_in[r][t + j - F].
// Register tiles of 5 channels x 2 vectors of frames (10 accumulators), so each load of the
// padded input feeds 5 FMAs.
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {

constexpr int kConvChans = 5;  // register tile: 5 channels ...
constexpr int kConvVecs = 2;   // ... x 2 vectors of frames

template <typename T>
struct LocationConv {
  static constexpr int W = lanes<T>();
  using V = Vec<T>;
  const T* w;  // [C][R][K]
  int64_t C, R, K, T_in;
  // Row length of f, and the frames of padded input a tile may read: at least the last output
  // frame rounded up to a whole tile (kConvVecs * W frames past any tile start).
  int64_t T_pad;

  int64_t F() const { return (K - 1) / 2; }
  int64_t pad_width() const { return T_pad + 2 * F() + W; }

  // The R rows of x ([R][T_in]) into pad (R x pad_width()), F zeros first and zeros after.
  void pad_input(const T* x, T* pad) const {
    const int64_t width = pad_width();
    for (int64_t r = 0; r < R; ++r) {
      T* row = pad + r * width;
      std::fill(row, row + width, T(0));
      std::copy(x + r * T_in, x + (r + 1) * T_in, row + F());
    }
  }

  // f[c][t] for t in [t_begin, t_end) into f (C x T_pad), in whole tiles of 2 vectors of frames
  // (so up to a tile past t_end), from pad as pad_input left it.
  void features(const T* pad, int64_t t_begin, int64_t t_end, T* f) const {
    const int64_t width = pad_width(), Fh = F();
    for (int64_t t = t_begin; t < t_end; t += kConvVecs * W) {
      // Only the taps that reach an input frame of [0, T) for some output frame of the tile:
      // the others read the zero padding (at T = 200, K = 201, a quarter of all taps).
      const int64_t j_lo = std::max<int64_t>(0, Fh - (t + kConvVecs * W - 1));
      const int64_t j_hi = std::min<int64_t>(K, Fh + T_in - t);
      for (int64_t c0 = 0; c0 < C; c0 += kConvChans) {
        const int cn = int(std::min<int64_t>(kConvChans, C - c0));
        V acc[kConvChans][kConvVecs] = {};
        for (int64_t r = 0; r < R; ++r) {
          const T* x = pad + r * width + t;
          const T* wr[kConvChans];
          for (int c = 0; c < kConvChans; ++c) wr[c] = w + ((c0 + std::min(c, cn - 1)) * R + r) * K;
          for (int64_t j = j_lo; j < j_hi; ++j) {
            V xv[kConvVecs];
            for (int v = 0; v < kConvVecs; ++v) xv[v] = load(x + j + v * W);
            for (int c = 0; c < kConvChans; ++c) {
              const V wc = splat<T>(wr[c][j]);
              for (int v = 0; v < kConvVecs; ++v) acc[c][v] += wc * xv[v];
            }
          }
        }
        for (int c = 0; c < cn; ++c)
          for (int v = 0; v < kConvVecs; ++v) store(f + (c0 + c) * T_pad + t + v * W, acc[c][v]);
      }
    }
  }
};

}  // namespace attnkit::cpu::ATTNKIT_ISA
