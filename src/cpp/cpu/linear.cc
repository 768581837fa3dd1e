// Linear layer for a handful of rows (LinearParams), compiled once per ISA, for two layouts of
// the weight:
//   - torch's [A, K]: each output is a dot product over K, contiguous in x and w. A tile keeps
//     one vector accumulator per output, W of them (W = lanes): 2 rows x W/2 outputs, or 1 row x
//     W. One in-register transpose turns them into the W dot products, instead of W horizontal
//     sums (those cost as much as the whole K loop at K = 320, benchmarks/NOTES.md). ~25 GMAC/s.
//   - packed panels [ceil(A/P)][K][P] (P outputs of 64 bytes, zero-padded; attnkit's modules pack
//     their weights once): x is broadcast, the panel row loaded, and every FMA adds into an
//     output accumulator, so nothing is reduced at the end. A tile is R rows x one panel, 12
//     accumulators. Near the FMA peak. float32 panels may be stored as float16 (Tw = uint16_t,
//     the IEEE bits) when that is exact: the same sums from half the bytes.
// pack_linear_weight writes that packed layout from the [A, K] one.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "attnkit/parallel.h"
#include "attnkit/params.h"
#include "cpu/isa.h"
#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {
namespace {

// Tw: how the packed panels are stored, T or (float only) uint16_t float16 bits.
template <typename T, typename Tw = T>
struct LinearKernel {
  static constexpr int W = lanes<T>();
  using V = Vec<T>;
  const LinearParams& p;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);        // the [A, K] layout (Tw = T)
  const Tw* pw = static_cast<const Tw*>(p.w);     // packed panels
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  int64_t kfull = p.K / W * W;
  int ktail = int(p.K - kfull);

  // Rows [n0, n0 + R) x outputs [a, a + no), R * kO = W accumulators; rows and outputs past the
  // ends repeat the last valid one (their results are dropped).
  template <int R>
  void tile(int64_t n0, int nr, int64_t a, int no) const {
    constexpr int kO = W / R;
    const T* xr[R];
    const T* wr[kO];
    for (int r = 0; r < R; ++r) xr[r] = x + (n0 + std::min(r, nr - 1)) * p.K;
    for (int o = 0; o < kO; ++o) wr[o] = w + (a + std::min(o, no - 1)) * p.K;
    V acc[W] = {};
    for (int64_t k = 0; k < kfull; k += W) {
      V wv[kO];
      for (int o = 0; o < kO; ++o) wv[o] = load(wr[o] + k);
      for (int r = 0; r < R; ++r) {
        const V xv = load(xr[r] + k);
        for (int o = 0; o < kO; ++o) acc[r * kO + o] += xv * wv[o];
      }
    }
    if (ktail) {
      V wv[kO];
      for (int o = 0; o < kO; ++o) wv[o] = load_partial(wr[o] + kfull, ktail);
      for (int r = 0; r < R; ++r) {
        const V xv = load_partial(xr[r] + kfull, ktail);
        for (int o = 0; o < kO; ++o) acc[r * kO + o] += xv * wv[o];
      }
    }
    // Lane j of sum is the dot product of accumulator j.
    V sum = sum_each<T>(acc);
    for (int j = 0; j < W && bias; ++j) sum[j] += bias[a + std::min(j % kO, no - 1)];
    if (p.tanh) sum = tanhv<T>(sum);
    for (int r = 0; r < nr; ++r)
      for (int o = 0; o < no; ++o) y[(n0 + r) * p.A + a + o] = sum[r * kO + o];
  }

  // Packed weight: R rows x one panel of PV vectors. With fewer than 8 accumulators the K loop
  // is split over S interleaved accumulator sets (an FMA's 4-cycle latency needs 8 chains to
  // keep 2 pipes busy), summed at the end.
  static constexpr int PV = int(kLinearPanelBytes / int64_t(sizeof(V)));  // vectors per panel row
  static constexpr int P = PV * W;                                         // outputs per panel
  static constexpr int kPackedRows = 12 / PV;  // 6 rows on AVX2, 12 on AVX-512, 3 on 16-byte vectors

  static V load_w(const Tw* q) {
    if constexpr (std::is_same_v<Tw, T>)
      return load(q);
    else
      return load_half(q);
  }

  template <int R>
  void packed_tile(int64_t n0, const Tw* panel, int64_t a, int no) const {
    constexpr int S = R * PV >= 8 ? 1 : (R * PV >= 4 ? 2 : 4);
    const T* xr[R];
    for (int r = 0; r < R; ++r) xr[r] = x + (n0 + r) * p.K;
    V acc[S][R][PV] = {};
    int64_t k = 0;
    for (; k + S <= p.K; k += S)
      for (int s = 0; s < S; ++s) {
        V wv[PV];
        for (int v = 0; v < PV; ++v) wv[v] = load_w(panel + (k + s) * P + v * W);
        for (int r = 0; r < R; ++r) {
          const V xs = splat<T>(xr[r][k + s]);
          for (int v = 0; v < PV; ++v) acc[s][r][v] += xs * wv[v];
        }
      }
    for (; k < p.K; ++k)
      for (int r = 0; r < R; ++r) {
        const V xs = splat<T>(xr[r][k]);
        for (int v = 0; v < PV; ++v) acc[0][r][v] += xs * load_w(panel + k * P + v * W);
      }
    for (int v = 0; v < PV; ++v) {
      const int width = std::clamp(no - v * W, 0, W);
      if (width == 0) break;
      const V b = !bias ? V{} : width == W ? load(bias + a + v * W) : load_partial(bias + a + v * W, width);
      for (int r = 0; r < R; ++r) {
        V sum = acc[0][r][v] + b;
        for (int s = 1; s < S; ++s) sum += acc[s][r][v];
        if (p.tanh) sum = tanhv<T>(sum);
        T* dst = y + (n0 + r) * p.A + a + v * W;
        if (width == W)
          store(dst, sum);
        else
          store_partial(dst, sum, width);
      }
    }
  }

  template <int R = 1>
  void packed_rows(int64_t n0, int rows, const Tw* panel, int64_t a, int no) const {
    if constexpr (R < kPackedRows) {
      if (rows != R) return packed_rows<R + 1>(n0, rows, panel, a, no);
    }
    packed_tile<R>(n0, panel, a, no);
  }

  // Outputs [a0, a1) (a0 a multiple of P) of rows [r0, r1) (r0 a multiple of kPackedRows), panel
  // by panel: a panel (K x 64 bytes, 20 KiB at K = 320) stays in L1 across the row tiles.
  void packed(int64_t a0, int64_t a1, int64_t r0, int64_t r1) const {
    for (int64_t a = a0; a < a1; a += P) {
      const Tw* panel = pw + (a / P) * p.K * P;
      const int no = int(std::min<int64_t>(P, a1 - a));
      for (int64_t n0 = r0; n0 < r1; n0 += kPackedRows)
        packed_rows(n0, int(std::min<int64_t>(kPackedRows, r1 - n0)), panel, a, no);
    }
  }

  // Outputs [a0, a1) of rows [r0, r1) (r0 a multiple of 16). Blocks of 16 rows with the outputs
  // outer inside a block: a tile's W/2 weight rows stay in L1 across the block's row pairs and the
  // block's rows stay in L1 too (16 x 384 floats = 24 KiB), so w is read from L2 once per block.
  void rows(int64_t a0, int64_t a1, int64_t r0, int64_t r1) const {
    constexpr int64_t kRowBlock = 16;
    for (int64_t nb = r0; nb < r1; nb += kRowBlock) {
      const int64_t nb_end = std::min(r1, nb + kRowBlock);
      if (nb_end - nb == 1) {
        for (int64_t a = a0; a < a1; a += W) tile<1>(nb, 1, a, int(std::min<int64_t>(W, a1 - a)));
        continue;
      }
      for (int64_t a = a0; a < a1; a += W / 2)
        for (int64_t n0 = nb; n0 < nb_end; n0 += 2)
          tile<2>(n0, int(std::min<int64_t>(2, nb_end - n0)), a, int(std::min<int64_t>(W / 2, a1 - a)));
    }
  }
};

// W x W tiles (W rows of one panel x W inputs) transposed in registers and stored as W
// contiguous vectors of the panel: 512 x 512 float32 (1 MiB) in 71 us on 1 thread, 39 on 2,
// where NumPy's strided transpose copy took ~180 us and scalar scatters 210-400 (NOTES.md,
// Linear layer 12).
template <typename T>
void pack_panels(const PackLinearParams& p) {
  constexpr int W = lanes<T>();
  constexpr int64_t P = kLinearPanelBytes / int64_t(sizeof(T));
  static_assert(P % W == 0, "a panel holds whole vectors");
  const T* w = static_cast<const T*>(p.w);
  const int64_t kfull = p.K / W * W;
  const int ktail = int(p.K - kfull);
  auto run = [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T* panel = static_cast<T*>(p.panels) + i * p.K * P;
      for (int64_t r0 = 0; r0 < P; r0 += W) {
        const int64_t row0 = i * P + r0;
        const int rows = int(std::max<int64_t>(0, std::min<int64_t>(W, p.A - row0)));
        for (int64_t k0 = 0; k0 < p.K; k0 += W) {
          const int n = k0 < kfull ? W : ktail;
          Vec<T> r[W];
          for (int j = 0; j < W; ++j)
            r[j] = j >= rows ? splat<T>(T(0)) : n == W ? load(w + (row0 + j) * p.K + k0)
                                                     : load_partial(w + (row0 + j) * p.K + k0, n);
          transpose_block<T>(r);
          for (int d = 0; d < n; ++d) store(panel + (k0 + d) * P + r0, r[d]);
        }
      }
    }
  };
  const int64_t panels = (p.A + P - 1) / P;
  if (p.A * p.K >= (int64_t(1) << 16))
    parallel_for(panels, run);
  else
    run(0, 0, panels);
}

}  // namespace

void linear(const LinearParams& p) {
  // Chunks of 32 outputs (two float32 panels, four float64 ones): a step-sized product
  // (10 x 320 x 320) splits into 10 tasks, 5 per thread on 2 threads (chunks of 64: 3 + 2).
  constexpr int64_t kChunk = 32;
  const int64_t chunks = (p.A + kChunk - 1) / kChunk;
  // N * A * K >= 2^17 multiply-adds, written so that the product cannot overflow.
  const bool parallel = p.N * p.A >= ((int64_t(1) << 17) + p.K - 1) / std::max<int64_t>(p.K, 1);
  // With fewer than two chunks per thread (a convolution's 32 output channels), the rows are cut
  // too, in blocks of a multiple of 48 rows: 48 is a multiple of every row tile (16 in rows(), 3, 6
  // or 12 in packed()), so each row meets the same tiles, and gets the same bits, at any thread
  // count.
  constexpr int64_t kRowUnit = 48;
  // From this many row units per thread the tasks are row units (below it they split unevenly
  // over the threads, 160 rows as 96 + 64 on 2, which made a decoder step's products slower:
  // NOTES.md, Linear layer 6).
  constexpr int64_t kRowTaskUnits = 4;
  const int64_t threads = num_threads();
  const int64_t row_units = (p.N + kRowUnit - 1) / kRowUnit;
  const int64_t row_blocks =
      !parallel || chunks >= 2 * threads ? 1 : std::min(row_units, (2 * threads + chunks - 1) / chunks);
  const int64_t block_rows = (row_units + row_blocks - 1) / row_blocks * kRowUnit;
  // Many rows on packed panels: each task is one unit of rows x all outputs, panel by panel, so
  // that the unit's x (48 KiB at K = 256) stays in L2 while the panels pass; chunk tasks read all
  // of x once per panel, from L3 when it does not fit L2. [4096, 256] x [256, 768] (multi-head
  // attention's in-projection): 1.13x at 1 thread, 1.15x at 2 (NOTES.md, Linear layer 11).
  const bool row_tasks = p.packed && parallel && row_units >= kRowTaskUnits * threads;
  const int64_t tasks = row_tasks ? row_units : chunks * row_blocks;
  auto run = [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t c = row_tasks ? 0 : u / row_blocks;
      const int64_t r0 = row_tasks ? u * kRowUnit : u % row_blocks * block_rows;
      const int64_t a0 = c * kChunk, a1 = row_tasks ? p.A : std::min(p.A, a0 + kChunk);
      const int64_t r1 = std::min(p.N, r0 + (row_tasks ? kRowUnit : block_rows));
      if (r0 >= r1) continue;
      if (p.dtype == DType::f32 && p.half_panels)
        LinearKernel<float, uint16_t>{p}.packed(a0, a1, r0, r1);
      else if (p.dtype == DType::f32)
        p.packed ? LinearKernel<float>{p}.packed(a0, a1, r0, r1) : LinearKernel<float>{p}.rows(a0, a1, r0, r1);
      else
        p.packed ? LinearKernel<double>{p}.packed(a0, a1, r0, r1) : LinearKernel<double>{p}.rows(a0, a1, r0, r1);
    }
  };
  if (parallel)
    parallel_for(tasks, run);
  else
    run(0, 0, tasks);
}

void pack_linear_weight(const PackLinearParams& p) {
  if (p.dtype == DType::f32)
    pack_panels<float>(p);
  else
    pack_panels<double>(p);
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
