// Scaled dot-product attention on the CPU, compiled once per ISA (see vec.h).
//
// Tiled path (more query rows than few_rows_faster takes), one task per (b, h, block of kBlockQ
// query rows):
//   Kp = K[b,h] packed in panels of NR keys (Kp[j/NR][d][j%NR]), once per (b,h) per thread and
//   only as far as some row needs; V is read in place, or packed as Vp padded to Dv_pad columns
//   when Dv is not a multiple of the register tile width.
//   Qs = Q block * scale * log2(e), so scores are in base 2 and exp becomes exp2.
//   for each block of kBlockK keys (skipping blocks past key_lengths[b] and the causal limit):
//     S = Qs Kp                          register tiles of kTileRows x (kTileVecs*W)
//     mask; m' = max(m, rowmax S); P = exp2(S - m'); l = l*2^(m-m') + rowsum P; O *= 2^(m-m')
//     O += P Vp                          register tiles again, P and Vp from L1/L2
//   O /= l (rows whose keys are all masked get 0).
// Few-rows path (Tq <= kFewRows, and up to 2W rows where its scores cost less), one task per
// (b, h) and key range, K and V read in place:
//   S = Qs K^T                           groups of W rows: tiles of W rows x KT keys, lanes over
//                                        the rows, transposed back; rows left: tiles of 1-2 rows
//                                        x 4-16 keys, lanes over d, each W sums reduced by sum_each
//   per row: mask; m = max S; P = exp2(S - m); l = rowsum P
//   O = P V                              register tiles of 1-6 rows x 1-8 vectors of V
// When B*H cannot fill the threads, the keys are split across tasks and the partial (max, sum,
// context) merged afterwards.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <new>

#include "attnkit/parallel.h"
#include "attnkit/params.h"
#include "attnkit/sizes.h"
#include "cpu/arena.h"
#include "cpu/isa.h"
#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {
namespace {

constexpr int64_t kBlockQ = 48;   // a multiple of every kTileRows (6, 12)
constexpr int64_t kBlockK = 256;  // S tile of 48x256 floats = 48 KiB, in L2; 128 and 96x128 measured 1-5% slower
constexpr double kLog2e = 1.4426950408889634;
// Query rows per head up to which the few-rows path (keys read in place) beats packing K for the
// tiled path on every ISA (B=1 H=4 Tk=1000 D=64, 1 thread, before lanes over rows: Tq=3 74 vs
// 125 us, Tq=9 176 vs 208; benchmarks/NOTES.md, SDPA 7), and the most scores it holds per task
// (Tq x Tk: 16 MiB of float32).
constexpr int64_t kFewRows = 9;
constexpr int64_t kFewRowsScores = int64_t(1) << 22;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// max that keeps NaN: std::max(m, NaN) returns m, so a row of NaN scores would pass for masked.
template <typename T> inline T max_or_nan(T m, T x) { return (x > m || x != x) ? x : m; }

template <typename T>
struct SdpaKernel {
  static constexpr int W = lanes<T>();
  static constexpr int NR = kTileVecs * W;  // keys per QK^T register tile = panel width
  static constexpr int NC = kTileVecs * W;  // output columns per PV register tile
  using V = Vec<T>;

  const SdpaParams& p;
  const T* q;
  const T* k;
  const T* v;
  T* o;
  T* w;
  const T qscale;  // scale * log2(e)
  const int64_t Dv_pad;
  const bool pack_v;  // V rows are read in place when Dv fills whole register tiles
  std::atomic<bool> out_of_memory{false};

  explicit SdpaKernel(const SdpaParams& params)
      : p(params),
        q(static_cast<const T*>(params.q)),
        k(static_cast<const T*>(params.k)),
        v(static_cast<const T*>(params.v)),
        o(static_cast<T*>(params.o)),
        w(static_cast<T*>(params.weights)),
        qscale(T(params.scale * kLog2e)),
        Dv_pad(round_up(params.Dv, NC)),
        pack_v(params.Dv % NC != 0) {}

  int64_t valid_keys(int64_t b) const { return p.key_lengths ? p.key_lengths[b] : p.Tk; }

  // Number of keys query row i may see: keys [0, limit) minus whatever the explicit mask drops.
  int64_t key_limit(int64_t b, int64_t i) const {
    int64_t lim = valid_keys(b);
    if (p.causal) lim = std::min(lim, i + p.causal_offset + 1);
    return std::max<int64_t>(lim, 0);
  }

  // Applies the explicit mask to raw base-2 scores s[0, n) of row (b,h,i) starting at key j0.
  void apply_mask(T* s, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n) const {
    const int64_t* ms = p.mask_stride;
    const int64_t base = b * ms[0] + h * ms[1] + i * ms[2] + j0 * ms[3];
    if (p.mask_kind == MaskKind::keep_bool) {
      const uint8_t* m = static_cast<const uint8_t*>(p.mask) + base;
      for (int64_t j = 0; j < n; ++j)
        if (!m[j * ms[3]]) s[j] = -std::numeric_limits<T>::infinity();
    } else if (p.mask_kind == MaskKind::additive) {
      const T* m = static_cast<const T*>(p.mask) + base;
      for (int64_t j = 0; j < n; ++j) s[j] += m[j * ms[3]] * T(kLog2e);
    }
  }

  // Writes normalised probabilities of row (b,h,i) from its raw base-2 scores (already stored in
  // the weights row): w = 2^(s - m) / l for j < limit, 0 elsewhere.
  void finish_weights(int64_t b, int64_t h, int64_t i, int64_t limit, T m, T l) const {
    T* row = w + b * p.w_stride[0] + h * p.w_stride[1] + i * p.w_stride[2];
    const bool empty = l == T(0);  // nothing visible; a NaN l (NaN scores) gives NaN weights
    const T inv = empty ? T(0) : T(1) / l;
    const V mv = splat<T>(m), iv = splat<T>(inv);
    int64_t j = 0;
    if (!empty) {
      for (; j + W <= limit; j += W) store(row + j, exp2v<T>(load(row + j) - mv) * iv);
      for (; j < limit; ++j) row[j] = exp2v<T>(splat<T>(row[j] - m))[0] * inv;
    }
    for (; j < p.Tk; ++j) row[j] = T(0);
  }

  // ---------------------------------------------------------------- tiled path

  // S[r][c] = sum_d Qs[r][d] * Kp[d][c] for kTileRows rows and NR columns.
  static inline void qk_tile(const T* __restrict qs, int64_t D, const T* __restrict kp, T* __restrict s,
                             int64_t lds) {
    V acc[kTileRows][kTileVecs] = {};
    for (int64_t d = 0; d < D; ++d) {
      V kv[kTileVecs];
#pragma GCC unroll 4
      for (int c = 0; c < kTileVecs; ++c) kv[c] = load(kp + d * NR + c * W);
#pragma GCC unroll 16
      for (int r = 0; r < kTileRows; ++r) {
        const V qb = splat<T>(qs[r * D + d]);
#pragma GCC unroll 4
        for (int c = 0; c < kTileVecs; ++c) acc[r][c] += qb * kv[c];
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < kTileRows; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < kTileVecs; ++c) store(s + r * lds + c * W, acc[r][c]);
  }

  struct TiledScratch {
    T* kp;  // [ceil(Tk/NR)][D][NR]
    T* vp;  // [Tk_pad][Dv_pad]
    T* qs;  // [kBlockQ][D]
    T* s;   // [kBlockQ][kBlockK]
    T* acc; // [kBlockQ][Dv_pad]
    T* m;   // [kBlockQ]
    T* l;   // [kBlockQ]
    int64_t packed_bh = -1;
    int64_t packed_keys = 0;
  };

  std::size_t tiled_layout(ScratchLayout& lay, std::size_t off[7]) const {
    const int64_t tk_pad = round_up(p.Tk, NR);
    off[0] = lay.add<T>(tk_pad * p.D);
    off[1] = lay.add<T>(pack_v ? tk_pad * Dv_pad : 0);
    off[2] = lay.add<T>(kBlockQ * p.D);
    off[3] = lay.add<T>(kBlockQ * kBlockK);
    off[4] = lay.add<T>(kBlockQ * Dv_pad);
    off[5] = lay.add<T>(kBlockQ);
    off[6] = lay.add<T>(kBlockQ);
    return lay.bytes();
  }

  // Packs keys [sc.packed_keys, round_up(need, NR)) of head (b,h); keys past the valid length
  // (padding, possibly garbage or NaN) are packed as zeros so that P = 0 times them stays 0.
  void ensure_packed(TiledScratch& sc, int64_t b, int64_t h, int64_t need) const {
    const int64_t bh = b * p.H + h;
    if (sc.packed_bh != bh) {
      sc.packed_bh = bh;
      sc.packed_keys = 0;
    }
    const int64_t target = round_up(need, NR);
    if (target <= sc.packed_keys) return;
    const int64_t valid = valid_keys(b);
    const T* kb = k + b * p.k_stride[0] + h * p.k_stride[1];
    const T* vb = v + b * p.v_stride[0] + h * p.v_stride[1];
    const int64_t dfull = p.D / W * W;
    for (int64_t j = sc.packed_keys; j < target;) {
      T* kpanel = sc.kp + (j / NR) * p.D * NR + (j % NR);
      const T* krow = kb + j * p.k_stride[2];
      const int64_t n = j % W == 0 && j + W <= valid ? W : 1;
      if (n == W) {
        // W whole keys: W x W transposes into the panel (3x fewer instructions than scalar
        // scattering, which cost as much as the math itself for a 10-hypothesis beam).
        for (int64_t d = 0; d < dfull; d += W) {
          V block[W];
          for (int i = 0; i < W; ++i) block[i] = load(krow + i * p.k_stride[2] + d);
          transpose_block<T>(block);
          for (int i = 0; i < W; ++i) store(kpanel + (d + i) * NR, block[i]);
        }
        for (int i = 0; i < W; ++i)
          for (int64_t d = dfull; d < p.D; ++d) kpanel[d * NR + i] = krow[i * p.k_stride[2] + d];
      } else {
        for (int64_t d = 0; d < p.D; ++d) kpanel[d * NR] = j < valid ? krow[d] : T(0);
      }
      if (pack_v) {
        for (int64_t jj = j; jj < j + n; ++jj) {
          T* vrow = sc.vp + jj * Dv_pad;
          const T* vsrc = vb + jj * p.v_stride[2];
          if (jj < valid) std::copy(vsrc, vsrc + p.Dv, vrow);
          std::fill(vrow + (jj < valid ? p.Dv : 0), vrow + Dv_pad, T(0));
        }
      }
      j += n;
    }
    sc.packed_keys = target;
  }

  void tiled_block(TiledScratch& sc, int64_t b, int64_t h, int64_t i0) const {
    const int64_t D = p.D, Dv = p.Dv;
    const int64_t mq = std::min(kBlockQ, p.Tq - i0);
    const int64_t mq_pad = round_up(mq, kTileRows);
    int64_t row_lim[kBlockQ];
    int64_t max_lim = 0;
    for (int64_t r = 0; r < mq; ++r) {
      row_lim[r] = key_limit(b, i0 + r);
      max_lim = std::max(max_lim, row_lim[r]);
    }
    ensure_packed(sc, b, h, max_lim);

    const T* qb = q + b * p.q_stride[0] + h * p.q_stride[1];
    for (int64_t r = 0; r < mq_pad; ++r) {
      T* dst = sc.qs + r * D;
      if (r < mq) {
        const T* src = qb + (i0 + r) * p.q_stride[2];
        for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * qscale;
      } else {
        std::fill(dst, dst + D, T(0));
      }
    }
    std::fill(sc.acc, sc.acc + mq_pad * Dv_pad, T(0));
    std::fill(sc.m, sc.m + mq_pad, -std::numeric_limits<T>::infinity());
    std::fill(sc.l, sc.l + mq_pad, T(0));
    T* wb = w ? w + b * p.w_stride[0] + h * p.w_stride[1] : nullptr;
    const T* vb = v + b * p.v_stride[0] + h * p.v_stride[1];

    for (int64_t j0 = 0; j0 < max_lim; j0 += kBlockK) {
      const int64_t nk = std::min(kBlockK, max_lim - j0);
      const int64_t nk_pad = round_up(nk, NR);
      for (int64_t r0 = 0; r0 < mq_pad; r0 += kTileRows)
        for (int64_t c = 0; c < nk_pad; c += NR)
          qk_tile(sc.qs + r0 * D, D, sc.kp + ((j0 + c) / NR) * D * NR, sc.s + r0 * kBlockK + c, kBlockK);

      for (int64_t r = 0; r < mq; ++r) {
        T* srow = sc.s + r * kBlockK;
        const int64_t lim = std::clamp<int64_t>(row_lim[r] - j0, 0, nk_pad);
        std::fill(srow + lim, srow + nk_pad, -std::numeric_limits<T>::infinity());
        if (p.mask_kind != MaskKind::none && lim > 0) apply_mask(srow, b, h, i0 + r, j0, lim);
        if (wb) std::copy(srow, srow + std::min(nk, p.Tk - j0), wb + (i0 + r) * p.w_stride[2] + j0);
        V mx = splat<T>(-std::numeric_limits<T>::infinity());
        for (int64_t j = 0; j < nk_pad; j += W) mx = vmax<T>(mx, load(srow + j));
        const T m_old = sc.m[r];
        const T m_new = std::max(m_old, hmax<T>(mx));
        if (m_new == -std::numeric_limits<T>::infinity()) {
          // Nothing visible yet in this row, unless the vector max dropped NaN scores: a NaN
          // score poisons the row (m = l = NaN): NaN in, NaN out.
          if (std::any_of(srow, srow + lim, [](T x) { return x != x; }))
            sc.m[r] = sc.l[r] = std::numeric_limits<T>::quiet_NaN();
          std::fill(srow, srow + nk_pad, T(0));
          continue;
        }
        const V mv = splat<T>(m_new);
        V sum = {};
        for (int64_t j = 0; j < nk_pad; j += W) {
          const V e = exp2v<T>(load(srow + j) - mv);
          store(srow + j, e);
          sum += e;
        }
        const T alpha = exp2v<T>(splat<T>(m_old - m_new))[0];
        sc.l[r] = sc.l[r] * alpha + hsum<T>(sum);
        sc.m[r] = m_new;
        T* arow = sc.acc + r * Dv_pad;
        if (m_old == -std::numeric_limits<T>::infinity()) {
          // First visible keys: drop what the row held, 0 x NaN included (V rows it cannot see).
          std::fill(arow, arow + Dv_pad, T(0));
        } else if (alpha != T(1)) {
          const V av = splat<T>(alpha);
          for (int64_t c = 0; c < Dv_pad; c += W) store(arow + c, load(arow + c) * av);
        }
      }
      // Unpacked V: only the nk keys of the block are read (never the padding past the valid
      // length, whose garbage times P = 0 could give NaN); packed V is zero there.
      const T* vblock = pack_v ? sc.vp + j0 * Dv_pad : vb + j0 * p.v_stride[2];
      const int64_t ldv = pack_v ? Dv_pad : p.v_stride[2];
      const int64_t nv = pack_v ? nk_pad : nk;
      for (int64_t r0 = 0; r0 < mq_pad; r0 += kTileRows)
        for (int64_t c = 0; c < Dv_pad; c += NC)
          pv_tile<kTileRows, kTileVecs, false>(sc.s + r0 * kBlockK, kBlockK, vblock + c, ldv, nv,
                                               sc.acc + r0 * Dv_pad + c, Dv_pad, 0);
    }

    T* ob = o + b * p.o_stride[0] + h * p.o_stride[1];
    for (int64_t r = 0; r < mq; ++r) {
      const T l = sc.l[r];
      const T* arow = sc.acc + r * Dv_pad;
      T* orow = ob + (i0 + r) * p.o_stride[2];
      // A row that sees no key gets zeros even when its accumulator holds 0 x NaN from the V rows
      // that other rows of the block see; a NaN l (NaN scores) gives NaN.
      if (l == T(0)) {
        std::fill(orow, orow + Dv, T(0));
      } else {
        const T inv = T(1) / l;
        for (int64_t c = 0; c < Dv; ++c) orow[c] = arow[c] * inv;
      }
      if (wb) finish_weights(b, h, i0 + r, row_lim[r], sc.m[r], l);
    }
  }

  void run_tiled() {
    const int64_t nqb = (p.Tq + kBlockQ - 1) / kBlockQ;
    const int64_t tasks = p.B * p.H * nqb;
    ScratchLayout lay;
    std::size_t off[7];
    const std::size_t bytes = tiled_layout(lay, off);
    // Tasks are handed out one at a time from a shared counter: causal blocks grow in cost along
    // the sequence, and on a shared machine one core may be slowed; a static split would make
    // the whole call wait for the slowest part. Consecutive tasks of a part still mostly share
    // one (b,h), so K stays packed. Results do not depend on which thread runs a task.
    std::atomic<int64_t> next{0};
    parallel_for(parallel_parts(tasks), [&](int64_t, int64_t, int64_t) {
      void* base = thread_scratch(bytes);
      if (!base) {
        out_of_memory.store(true);
        return;
      }
      TiledScratch sc{at<T>(base, off[0]), at<T>(base, off[1]), at<T>(base, off[2]), at<T>(base, off[3]),
                      at<T>(base, off[4]), at<T>(base, off[5]), at<T>(base, off[6])};
      for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < tasks;) {
        const int64_t qb = t % nqb, bh = t / nqb;
        tiled_block(sc, bh / p.H, bh % p.H, qb * kBlockQ);
      }
    });
  }

  // ---------------------------------------------------------------- few-rows path

  struct Partial {
    T m, l;
  };

  // Keys per score tile: the tile's sums fill whole vectors (and 8 accumulator chains at least).
  static constexpr int NA = W > 8 ? W : 8;

  // Scores of R query rows x KJ keys, keys read in place: lanes over d, then one sum_each per W
  // of the R * KJ sums. qs rows are zero past D, so only the keys' last vector is loaded partially.
  template <int R, int KJ>
  static void qk_rows_tile(const T* __restrict qs, int64_t ldq, const T* __restrict kr, int64_t ldk, int64_t D,
                           T* __restrict s, int64_t lds) {
    static_assert((R * KJ) % W == 0, "the tile's sums fill whole vectors");
    const int64_t dfull = D / W * W;
    V acc[R * KJ];
#pragma GCC unroll 32
    for (int a = 0; a < R * KJ; ++a) acc[a] = V{};
    for (int64_t d = 0; d < dfull; d += W) {
      V qv[R];  // the rows' vectors first, so that each key vector is loaded once
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r) qv[r] = load(qs + r * ldq + d);
#pragma GCC unroll 16
      for (int j = 0; j < KJ; ++j) {
        const V kv = load(kr + j * ldk + d);
#pragma GCC unroll 2
        for (int r = 0; r < R; ++r) acc[r * KJ + j] += qv[r] * kv;
      }
    }
    if (dfull < D) {
#pragma GCC unroll 16
      for (int j = 0; j < KJ; ++j) {
        const V kv = load_partial(kr + j * ldk + dfull, int(D - dfull));
#pragma GCC unroll 2
        for (int r = 0; r < R; ++r) acc[r * KJ + j] += load(qs + r * ldq + dfull) * kv;
      }
    }
    constexpr int run = KJ < W ? KJ : W;  // lanes of one row and consecutive keys
#pragma GCC unroll 4
    for (int g = 0; g < R * KJ / W; ++g) {
      T sums[W];
      store(sums, sum_each<T>(acc + g * W));
#pragma GCC unroll 16
      for (int i = 0; i < W; i += run) {
        const int a = g * W + i;
        std::memcpy(s + (a / KJ) * lds + a % KJ, sums + i, sizeof(T) * run);
      }
    }
  }

  // acc[g][c] += sum_j P[g][j] V[j][c] for G rows and NCV vectors of columns (both paths); with
  // kTail the last vector holds the `tail` columns left (loaded partially; acc rows are padded).
  template <int G, int NCV, bool kTail>
  static void pv_tile(const T* __restrict pm, int64_t lds, const T* __restrict vr, int64_t ldv, int64_t n,
                           T* __restrict acc, int64_t lda, int tail) {
    V a[G][NCV];
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
      for (int c = 0; c < NCV; ++c) a[g][c] = load(acc + g * lda + c * W);
    for (int64_t j = 0; j < n; ++j) {
      V vv[NCV];
#pragma GCC unroll 8
      for (int c = 0; c < NCV; ++c)
        vv[c] = kTail && c == NCV - 1 ? load_partial(vr + j * ldv + c * W, tail) : load(vr + j * ldv + c * W);
#pragma GCC unroll 16
      for (int g = 0; g < G; ++g) {
        const V pb = splat<T>(pm[g * lds + j]);
#pragma GCC unroll 8
        for (int c = 0; c < NCV; ++c) a[g][c] += pb * vv[c];
      }
    }
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
      for (int c = 0; c < NCV; ++c) store(acc + g * lda + c * W, a[g][c]);
  }

  template <int G, int NCV>
  void pv_rows_pass(const T* pm, int64_t lds, const T* vr, int64_t n, T* acc, int64_t c) const {
    const int tail = int(p.Dv % W);
    const bool last = c + NCV == (p.Dv + W - 1) / W;
    if (tail && last)
      pv_tile<G, NCV, true>(pm, lds, vr + c * W, p.v_stride[2], n, acc + c * W, Dv_pad, tail);
    else
      pv_tile<G, NCV, false>(pm, lds, vr + c * W, p.v_stride[2], n, acc + c * W, Dv_pad, tail);
  }

  // The context of G rows over n keys, in column passes of at most 8 / G vectors (>= 2): about 8
  // accumulator chains, the V vectors of a key loaded once per pass.
  template <int G>
  void pv_rows(const T* pm, int64_t lds, const T* vr, int64_t n, T* acc) const {
    constexpr int kMaxVecs = G == 1 ? 8 : G == 2 ? 4 : 2;
    const int64_t nvec = (p.Dv + W - 1) / W;
    int64_t c = 0;
    for (; kMaxVecs >= 8 && c + 8 <= nvec; c += 8) pv_rows_pass<G, 8>(pm, lds, vr, n, acc, c);
    for (; kMaxVecs >= 4 && c + 4 <= nvec; c += 4) pv_rows_pass<G, 4>(pm, lds, vr, n, acc, c);
    for (; c + 2 <= nvec; c += 2) pv_rows_pass<G, 2>(pm, lds, vr, n, acc, c);
    for (; c < nvec; ++c) pv_rows_pass<G, 1>(pm, lds, vr, n, acc, c);
  }

  // The scores of a row as probabilities in place, P = 2^(s - m), returning (m, l = sum P): a NaN
  // score makes m, every P and l NaN; a row with nothing visible gets m = -inf, P = 0, l = 0.
  static Partial softmax_in_place(T* s, int64_t n) {
    constexpr T kNegInf = -std::numeric_limits<T>::infinity();
    V mx = splat<T>(kNegInf);
    VecI<T> nan = {};
    int64_t j = 0;
    for (; j + W <= n; j += W) {
      const V x = load(s + j);
      mx = vmax<T>(mx, x);
      nan |= x != x;
    }
    T m = hmax<T>(mx);
    for (int i = 0; i < W; ++i)
      if (nan[i]) m = std::numeric_limits<T>::quiet_NaN();
    for (; j < n; ++j) m = max_or_nan(m, s[j]);
    if (m == kNegInf) {
      std::fill(s, s + n, T(0));
      return {m, T(0)};
    }
    const V mv = splat<T>(m);
    V sum = {};
    for (j = 0; j + W <= n; j += W) {
      const V e = exp2v<T>(load(s + j) - mv);
      store(s + j, e);
      sum += e;
    }
    T l = hsum<T>(sum);
    for (; j < n; ++j) {
      s[j] = exp2v<T>(splat<T>(s[j] - m))[0];
      l += s[j];
    }
    return {m, l};
  }

  // Keys per block of the few-rows scores loop (whole lanes-over-rows tiles, whole W x W
  // transposes, whole NA blocks for the rows left over) and per lanes-over-rows tile (12 or 24
  // accumulator chains, enough to cover the FMA latency; 8 measured ~20% slower).
  static constexpr int KB = 3 * NA;
  static constexpr int KT = KB / 2;

  // Scores of W query rows x KT keys with lanes over the rows: qt holds the rows' scaled q
  // transposed ([D][W]), each key element is broadcast, nothing is summed across lanes (4 cycles
  // per row and key at D = 64 on AVX2, the FMA bound, where qk_rows_tile takes 6-8). Out:
  // st[t][r] for the KT keys.
  static void qk_lanes_tile(const T* __restrict qt, const T* __restrict kr, int64_t ldk, int64_t D,
                            T* __restrict st) {
    V acc[KT];
#pragma GCC unroll 24
    for (int t = 0; t < KT; ++t) acc[t] = V{};
    for (int64_t d = 0; d < D; ++d) {
      const V qv = load(qt + d * W);
#pragma GCC unroll 24
      for (int t = 0; t < KT; ++t) acc[t] += splat<T>(kr[t * ldk + d]) * qv;
    }
#pragma GCC unroll 24
    for (int t = 0; t < KT; ++t) store(st + t * W, acc[t]);
  }

  // Scores of rows [i0, Tq) for the NA keys at kr (key j of the chunk): row pairs, then an odd
  // last row, lanes over d.
  static void qk_rows_block(const T* qs, int64_t Dq, int64_t i0, int64_t Tq, const T* kr, int64_t ldk,
                            int64_t D, T* s, int64_t lds, int64_t j) {
    int64_t i = i0;
    for (; i + 2 <= Tq; i += 2) {
      qk_rows_tile<2, NA / 2>(qs + i * Dq, Dq, kr, ldk, D, s + i * lds + j, lds);
      qk_rows_tile<2, NA / 2>(qs + i * Dq, Dq, kr + NA / 2 * ldk, ldk, D, s + i * lds + j + NA / 2, lds);
    }
    if (i < Tq) qk_rows_tile<1, NA>(qs + i * Dq, Dq, kr, ldk, D, s + i * lds + j, lds);
  }

  // Query rows whose scores the few-rows path computes with lanes over the rows: whole groups of
  // W, and one more group (its missing rows zero) when more than 5/8 W rows are left, since a
  // group costs what lanes over d cost for ~5 rows (AVX2, D = 64: ~37 against ~8 cycles per key).
  static int64_t lanes_over_rows(int64_t Tq) {
    return Tq % W > W / 2 + W / 8 ? round_up(Tq, W) : Tq / W * W;
  }

  // Whether the few-rows path beats the tiled one for Tq rows. Up to kFewRows it does (measured);
  // above, up to 2W rows, while its scores cost less, counted in passes of one row over one key's
  // D / W vectors (measured on AVX2 at D = 64: a group of W rows with lanes over the rows ~1.15 W
  // passes, a row with lanes over d ~2; the tiled path a pass per row of its padded tiles plus ~4
  // for packing the key). B=1 H=4 Tk=1000, 1 thread, old -> new: Tq = 10 206 -> 173 us, 13 266
  // -> 220, 16 287 -> 244; benchmarks/NOTES.md, SDPA 8.
  static bool few_rows_faster(int64_t Tq) {
    if (Tq <= kFewRows) return true;
    if (Tq > 2 * W) return false;
    const int64_t lane = lanes_over_rows(Tq);
    return 1.15 * double(lane) + 2.0 * double(Tq - std::min(lane, Tq)) < double(round_up(Tq, kTileRows) + 4);
  }

  struct RowsScratch {
    T* qs;   // [Tq][round_up(D, W)], scaled, zero past D
    T* qt;   // [ceil(Tq / W)][D][W]: the same rows transposed, per group of W rows (zero past Tq)
    T* s;    // [Tq][lds]
    T* acc;  // [Tq][Dv_pad]
    int64_t lds;
  };

  // Keys [j0, j1) for every query row of head (b,h): base-2 scores of row i into s[i] (raw ones
  // also into the weights), keys past the row's limit at -inf, then P in place (its (m, l) into
  // out[i]) and the unnormalised context in acc[i]. Keys are read in place, never packed.
  void rows_chunk(const RowsScratch& sc, int64_t b, int64_t h, int64_t j0, int64_t j1, Partial* out) const {
    const int64_t Tq = p.Tq, D = p.D, Dq = round_up(D, W), n = j1 - j0, lds = sc.lds;
    const T* qb = q + b * p.q_stride[0] + h * p.q_stride[1];
    for (int64_t i = 0; i < Tq; ++i) {
      T* dst = sc.qs + i * Dq;
      const T* src = qb + i * p.q_stride[2];
      for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * qscale;
      std::fill(dst + D, dst + Dq, T(0));
    }
    // Scores, a block of keys at a time while its K rows are in L1: rows in groups of W with lanes
    // over the rows (the tiles' key vectors transposed back into rows through st), the rows left
    // with lanes over d; the keys past the last whole block, every row with lanes over d.
    const int64_t ldk = p.k_stride[2];
    const T* kb = k + b * p.k_stride[0] + h * p.k_stride[1] + j0 * ldk;
    const int64_t lane_rows = lanes_over_rows(Tq), grouped = std::min(lane_rows, Tq);
    for (int64_t g = 0; g < lane_rows; g += W)
      for (int64_t d = 0; d < D; ++d)
        for (int r = 0; r < W; ++r) sc.qt[g * D + d * W + r] = g + r < Tq ? sc.qs[(g + r) * Dq + d] : T(0);
    int64_t j = 0;
    if (lane_rows > 0) {
      T st[KB * W];
      for (; j + KB <= n; j += KB) {
        const T* kr = kb + j * ldk;
        for (int64_t g = 0; g < lane_rows; g += W) {
          qk_lanes_tile(sc.qt + g * D, kr, ldk, D, st);
          qk_lanes_tile(sc.qt + g * D, kr + KT * ldk, ldk, D, st + KT * W);
          const int rows = int(std::min<int64_t>(W, Tq - g));
          for (int c = 0; c < KB; c += W) {
            V block[W];
#pragma GCC unroll 16
            for (int t = 0; t < W; ++t) block[t] = load(st + (c + t) * W);
            transpose_block<T>(block);
            for (int r = 0; r < rows; ++r) store(sc.s + (g + r) * lds + j + c, block[r]);
          }
        }
        for (int c = 0; c < KB; c += NA)
          qk_rows_block(sc.qs, Dq, grouped, Tq, kr + c * ldk, ldk, D, sc.s, lds, j + c);
      }
    }
    for (; j + NA <= n; j += NA) qk_rows_block(sc.qs, Dq, 0, Tq, kb + j * ldk, ldk, D, sc.s, lds, j);
    for (; j < n; ++j) {
      const T* kr = kb + j * ldk;
      for (int64_t i = 0; i < Tq; ++i) {
        V a = {};
        for (int64_t d = 0; d < Dq; d += W)
          a += load(sc.qs + i * Dq + d) * (d + W <= D ? load(kr + d) : load_partial(kr + d, int(D - d)));
        sc.s[i * lds + j] = hsum<T>(a);
      }
    }
    T* wb = w ? w + b * p.w_stride[0] + h * p.w_stride[1] : nullptr;
    for (int64_t i = 0; i < Tq; ++i) {
      T* srow = sc.s + i * lds;
      const int64_t lim = std::clamp<int64_t>(key_limit(b, i) - j0, 0, n);
      std::fill(srow + lim, srow + n, -std::numeric_limits<T>::infinity());
      if (p.mask_kind != MaskKind::none && lim > 0) apply_mask(srow, b, h, i, j0, lim);
      if (wb) std::copy(srow, srow + lim, wb + i * p.w_stride[2] + j0);
      out[i] = softmax_in_place(srow, n);
    }
    // Context: rows in balanced tiles of at most 6, keys in blocks of 64 whose V rows stay in L1
    // across the tiles and column passes.
    std::fill(sc.acc, sc.acc + Tq * Dv_pad, T(0));
    const T* vb = v + b * p.v_stride[0] + h * p.v_stride[1] + j0 * p.v_stride[2];
    constexpr int64_t kMaxTileRows = 6, kKeyBlock = 64;
    const int64_t tiles = (Tq + kMaxTileRows - 1) / kMaxTileRows;
    for (int64_t jb = 0; jb < n; jb += kKeyBlock) {
      const int64_t nb = std::min(kKeyBlock, n - jb);
      const T* vr = vb + jb * p.v_stride[2];
      for (int64_t t = 0, i0 = 0; t < tiles; ++t) {
        const int64_t g = (Tq - i0 + (tiles - t) - 1) / (tiles - t);
        const T* pm = sc.s + i0 * lds + jb;
        T* ar = sc.acc + i0 * Dv_pad;
        switch (g) {
          case 1: pv_rows<1>(pm, lds, vr, nb, ar); break;
          case 2: pv_rows<2>(pm, lds, vr, nb, ar); break;
          case 3: pv_rows<3>(pm, lds, vr, nb, ar); break;
          case 4: pv_rows<4>(pm, lds, vr, nb, ar); break;
          case 5: pv_rows<5>(pm, lds, vr, nb, ar); break;
          default: pv_rows<6>(pm, lds, vr, nb, ar); break;
        }
        i0 += g;
      }
    }
  }

  // One task per (b,h) and key range. The keys are split when the heads alone cannot keep every
  // thread busy (at least 256 keys a range, so that merging stays negligible); the split depends
  // only on the shape and the thread count.
  void run_rows() {
    const int64_t Tq = p.Tq, heads = p.B * p.H;
    const int64_t threads = num_threads();
    int64_t splits = 1;
    if (heads < 2 * threads)
      splits = std::clamp<int64_t>((2 * threads + heads - 1) / heads, 1, std::max<int64_t>(1, p.Tk / 256));
    const int64_t chunk = (p.Tk + splits - 1) / splits;
    const int64_t tasks = heads * splits;
    const int64_t lds = round_up(std::max<int64_t>(chunk, 1), W);
    ScratchLayout lay;
    const std::size_t off_q = lay.add<T>(Tq * round_up(p.D, W)), off_qt = lay.add<T>(round_up(Tq, W) * p.D),
                      off_s = lay.add<T>(Tq * lds),
                      off_acc = lay.add<T>(Tq * Dv_pad), off_part = lay.add<Partial>(Tq);
    const std::size_t bytes = lay.bytes();
    // The split tasks' (m, l) and unnormalised contexts, per task and row.
    std::unique_ptr<Partial[]> partial;
    std::unique_ptr<T[]> partial_acc;
    if (splits > 1) {
      partial = allocate_array<Partial>(checked_mul(tasks, Tq));
      partial_acc = allocate_array<T>(checked_mul(checked_mul(tasks, Tq), p.Dv));
    }
    parallel_for(tasks, [&](int64_t, int64_t begin, int64_t end) {
      void* base = thread_scratch(bytes);
      if (!base) {
        out_of_memory.store(true);
        return;
      }
      const RowsScratch sc{at<T>(base, off_q), at<T>(base, off_qt), at<T>(base, off_s), at<T>(base, off_acc), lds};
      Partial* parts = at<Partial>(base, off_part);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t bh = t / splits, part = t % splits, b = bh / p.H, h = bh % p.H;
        int64_t max_lim = 0;
        for (int64_t i = 0; i < Tq; ++i) max_lim = std::max(max_lim, key_limit(b, i));
        const int64_t j0 = std::min(part * chunk, max_lim), j1 = std::min(j0 + chunk, max_lim);
        rows_chunk(sc, b, h, j0, j1, parts);
        for (int64_t i = 0; i < Tq; ++i) {
          const T* arow = sc.acc + i * Dv_pad;
          if (splits > 1) {
            partial[t * Tq + i] = parts[i];
            std::copy(arow, arow + p.Dv, partial_acc.get() + (t * Tq + i) * p.Dv);
            continue;
          }
          // A row that sees no key gets zeros even when its accumulator holds 0 x NaN from V rows
          // that other rows see; a NaN l (NaN scores) gives NaN.
          T* orow = o + b * p.o_stride[0] + h * p.o_stride[1] + i * p.o_stride[2];
          if (parts[i].l == T(0)) {
            std::fill(orow, orow + p.Dv, T(0));
          } else {
            const T inv = T(1) / parts[i].l;
            for (int64_t e = 0; e < p.Dv; ++e) orow[e] = arow[e] * inv;
          }
          if (w) finish_weights(b, h, i, key_limit(b, i), parts[i].m, parts[i].l);
        }
      }
    });
    if (splits == 1 || out_of_memory.load()) return;
    // Merge: M = max_s m_s, L = sum_s l_s 2^(m_s - M), O = sum_s acc_s 2^(m_s - M) / L.
    for (int64_t bh = 0; bh < heads; ++bh) {
      const int64_t b = bh / p.H, h = bh % p.H;
      for (int64_t i = 0; i < Tq; ++i) {
        const auto at_split = [&](int64_t s) { return (bh * splits + s) * Tq + i; };
        T M = -std::numeric_limits<T>::infinity();
        for (int64_t s = 0; s < splits; ++s) M = max_or_nan(M, partial[at_split(s)].m);
        T* orow = o + b * p.o_stride[0] + h * p.o_stride[1] + i * p.o_stride[2];
        std::fill(orow, orow + p.Dv, T(0));
        T L = 0;
        if (M != -std::numeric_limits<T>::infinity()) {
          for (int64_t s = 0; s < splits; ++s) {
            const Partial& pr = partial[at_split(s)];
            if (pr.l == T(0)) continue;
            const T f = std::exp2(pr.m - M);
            L += pr.l * f;
            const T* a = partial_acc.get() + at_split(s) * p.Dv;
            for (int64_t e = 0; e < p.Dv; ++e) orow[e] += a[e] * f;
          }
          const T inv = T(1) / L;
          for (int64_t e = 0; e < p.Dv; ++e) orow[e] *= inv;
        }
        if (w) finish_weights(b, h, i, key_limit(b, i), M, L);
      }
    }
  }

  void run() {
    if (p.Tq <= 2 || (few_rows_faster(p.Tq) && p.Tq * p.Tk <= kFewRowsScores))
      run_rows();
    else
      run_tiled();
    if (out_of_memory.load()) throw std::bad_alloc();
  }
};

}  // namespace

void sdpa_forward(const SdpaParams& p) {
  if (p.dtype == DType::f32) {
    SdpaKernel<float> kernel(p);
    kernel.run();
  } else {
    SdpaKernel<double> kernel(p);
    kernel.run();
  }
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
