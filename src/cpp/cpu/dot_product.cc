// Scaled dot-product attention on the CPU, compiled once per ISA (see vec.h).
//
// Tiled path (Tq > 2), one task per (b, h, block of kBlockQ query rows):
//   Kp = K[b,h] packed in panels of NR keys (Kp[j/NR][d][j%NR]), once per (b,h) per thread and
//   only as far as some row needs; V is read in place, or packed as Vp padded to Dv_pad columns
//   when Dv is not a multiple of the register tile width.
//   Qs = Q block * scale * log2(e), so scores are in base 2 and exp becomes exp2.
//   for each block of kBlockK keys (skipping blocks past key_lengths[b] and the causal limit):
//     S = Qs Kp                          register tiles of kTileRows x (kTileVecs*W)
//     mask; m' = max(m, rowmax S); P = exp2(S - m'); l = l*2^(m-m') + rowsum P; O *= 2^(m-m')
//     O += P Vp                          register tiles again, P and Vp from L1/L2
//   O /= l (rows whose keys are all masked get 0).
// Decode path (Tq <= 2): per query row, scores against each key read once from K, a softmax over
// the row, then one pass over V; when B*H*Tq rows cannot fill the threads, the keys are split
// across tasks and the partial (max, sum, context) merged afterwards.
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
    if (p.causal) lim = std::min(lim, i + p.Tk - p.Tq + 1);
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

  // O[r][c] += sum_j P[r][j] * Vp[j][c] for kTileRows rows and NC columns.
  static inline void pv_tile(const T* __restrict pm, int64_t lds, const T* __restrict vp, int64_t ldv, int64_t nk,
                             T* __restrict out, int64_t ldo) {
    V acc[kTileRows][kTileVecs];
#pragma GCC unroll 16
    for (int r = 0; r < kTileRows; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < kTileVecs; ++c) acc[r][c] = load(out + r * ldo + c * W);
    for (int64_t j = 0; j < nk; ++j) {
      V vv[kTileVecs];
#pragma GCC unroll 4
      for (int c = 0; c < kTileVecs; ++c) vv[c] = load(vp + j * ldv + c * W);
#pragma GCC unroll 16
      for (int r = 0; r < kTileRows; ++r) {
        const V pb = splat<T>(pm[r * lds + j]);
#pragma GCC unroll 4
        for (int c = 0; c < kTileVecs; ++c) acc[r][c] += pb * vv[c];
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < kTileRows; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < kTileVecs; ++c) store(out + r * ldo + c * W, acc[r][c]);
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
          pv_tile(sc.s + r0 * kBlockK, kBlockK, vblock + c, ldv, nv, sc.acc + r0 * Dv_pad + c, Dv_pad);
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

  // ---------------------------------------------------------------- decode path

  struct Partial {
    T m, l;
  };

  // Keys [j0, j1) of row (b,h,i): raw base-2 scores into s, then P in place, context into acc.
  Partial decode_chunk(int64_t b, int64_t h, int64_t i, int64_t j0, int64_t j1, T* qs, T* s, T* acc) const {
    const int64_t D = p.D, Dv = p.Dv;
    const T* qrow = q + b * p.q_stride[0] + h * p.q_stride[1] + i * p.q_stride[2];
    for (int64_t d = 0; d < D; ++d) qs[d] = qrow[d] * qscale;
    const T* kb = k + b * p.k_stride[0] + h * p.k_stride[1];
    const int64_t n = j1 - j0;
    const int64_t dfull = D / W * W;
    const int dtail = int(D - dfull);
    int64_t j = 0;
    // Four keys at a time: four independent FMA chains instead of one latency-bound chain.
    for (; j + 4 <= n; j += 4) {
      const T* k0 = kb + (j0 + j) * p.k_stride[2];
      const T* k1 = k0 + p.k_stride[2];
      const T* k2 = k1 + p.k_stride[2];
      const T* k3 = k2 + p.k_stride[2];
      V a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t d = 0; d < dfull; d += W) {
        const V qv = load(qs + d);
        a0 += qv * load(k0 + d);
        a1 += qv * load(k1 + d);
        a2 += qv * load(k2 + d);
        a3 += qv * load(k3 + d);
      }
      if (dtail) {
        const V qv = load_partial(qs + dfull, dtail);
        a0 += qv * load_partial(k0 + dfull, dtail);
        a1 += qv * load_partial(k1 + dfull, dtail);
        a2 += qv * load_partial(k2 + dfull, dtail);
        a3 += qv * load_partial(k3 + dfull, dtail);
      }
      s[j] = hsum<T>(a0);
      s[j + 1] = hsum<T>(a1);
      s[j + 2] = hsum<T>(a2);
      s[j + 3] = hsum<T>(a3);
    }
    for (; j < n; ++j) {
      const T* kr = kb + (j0 + j) * p.k_stride[2];
      V a = {};
      for (int64_t d = 0; d < dfull; d += W) a += load(qs + d) * load(kr + d);
      if (dtail) a += load_partial(qs + dfull, dtail) * load_partial(kr + dfull, dtail);
      s[j] = hsum<T>(a);
    }
    if (p.mask_kind != MaskKind::none) apply_mask(s, b, h, i, j0, n);
    if (w) std::copy(s, s + n, w + b * p.w_stride[0] + h * p.w_stride[1] + i * p.w_stride[2] + j0);

    T m = -std::numeric_limits<T>::infinity();
    for (int64_t t = 0; t < n; ++t) m = max_or_nan(m, s[t]);
    std::fill(acc, acc + Dv, T(0));
    if (m == -std::numeric_limits<T>::infinity()) return {m, T(0)};
    const V mv = splat<T>(m);
    V sum = {};
    int64_t t = 0;
    for (; t + W <= n; t += W) {
      const V e = exp2v<T>(load(s + t) - mv);
      store(s + t, e);
      sum += e;
    }
    T l = hsum<T>(sum);
    for (; t < n; ++t) {
      s[t] = exp2v<T>(splat<T>(s[t] - m))[0];
      l += s[t];
    }
    // acc = sum_j P[j] V[j]; keys with P = 0 (masked) are skipped so padding garbage never enters.
    const T* vb = v + b * p.v_stride[0] + h * p.v_stride[1];
    const int64_t efull = Dv / W * W;
    const int etail = int(Dv - efull);
    for (int64_t jj = 0; jj < n; ++jj) {
      const T pj = s[jj];
      if (pj == T(0)) continue;
      const T* vr = vb + (j0 + jj) * p.v_stride[2];
      const V pv = splat<T>(pj);
      for (int64_t e = 0; e < efull; e += W) store(acc + e, load(acc + e) + pv * load(vr + e));
      if (etail) store_partial(acc + efull, load_partial(acc + efull, etail) + pv * load_partial(vr + efull, etail), etail);
    }
    return {m, l};
  }

  void run_decode() {
    const int64_t rows = p.B * p.H * p.Tq;
    // Split the keys when the rows alone cannot keep every thread busy; at least 256 keys a
    // chunk so that merging stays negligible. Depends only on the shape and thread count.
    const int64_t threads = num_threads();
    int64_t splits = 1;
    if (rows < 2 * threads) splits = std::clamp<int64_t>((2 * threads + rows - 1) / rows, 1, std::max<int64_t>(1, p.Tk / 256));
    const int64_t chunk = (p.Tk + splits - 1) / splits;
    const int64_t tasks = rows * splits;
    ScratchLayout lay;
    const std::size_t off_q = lay.add<T>(p.D), off_s = lay.add<T>(chunk), off_acc = lay.add<T>(round_up(p.Dv, W));
    const std::size_t bytes = lay.bytes();
    // Partial results of the split tasks: (m, l) and the unnormalised context per task.
    std::unique_ptr<Partial[]> partial;
    std::unique_ptr<T[]> partial_acc;
    if (splits > 1) {
      partial = allocate_array<Partial>(tasks);
      partial_acc = allocate_array<T>(checked_mul(tasks, p.Dv));
    }
    parallel_for(tasks, [&](int64_t, int64_t begin, int64_t end) {
      void* base = thread_scratch(bytes);
      if (!base) {
        out_of_memory.store(true);
        return;
      }
      T* qs = at<T>(base, off_q);
      T* s = at<T>(base, off_s);
      T* acc = at<T>(base, off_acc);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t row = t / splits, part = t % splits;
        const int64_t i = row % p.Tq, bh = row / p.Tq, b = bh / p.H, h = bh % p.H;
        const int64_t lim = key_limit(b, i);
        const int64_t j0 = std::min(part * chunk, lim), j1 = std::min(j0 + chunk, lim);
        const Partial pr = decode_chunk(b, h, i, j0, j1, qs, s, acc);
        if (splits > 1) {
          partial[t] = pr;
          std::copy(acc, acc + p.Dv, partial_acc.get() + t * p.Dv);
          continue;
        }
        T* orow = o + b * p.o_stride[0] + h * p.o_stride[1] + i * p.o_stride[2];
        const T inv = pr.l == T(0) ? T(0) : T(1) / pr.l;
        for (int64_t e = 0; e < p.Dv; ++e) orow[e] = acc[e] * inv;
        if (w) finish_weights(b, h, i, lim, pr.m, pr.l);
      }
    });
    if (splits == 1 || out_of_memory.load()) return;
    // Merge: M = max_s m_s, L = sum_s l_s 2^(m_s - M), O = sum_s acc_s 2^(m_s - M) / L.
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t i = row % p.Tq, bh = row / p.Tq, b = bh / p.H, h = bh % p.H;
      T M = -std::numeric_limits<T>::infinity();
      for (int64_t s = 0; s < splits; ++s) M = max_or_nan(M, partial[row * splits + s].m);
      T* orow = o + b * p.o_stride[0] + h * p.o_stride[1] + i * p.o_stride[2];
      std::fill(orow, orow + p.Dv, T(0));
      T L = 0;
      if (M != -std::numeric_limits<T>::infinity()) {
        for (int64_t s = 0; s < splits; ++s) {
          const Partial& pr = partial[row * splits + s];
          if (pr.l == T(0)) continue;
          const T f = std::exp2(pr.m - M);
          L += pr.l * f;
          const T* a = partial_acc.get() + (row * splits + s) * p.Dv;
          for (int64_t e = 0; e < p.Dv; ++e) orow[e] += a[e] * f;
        }
        const T inv = T(1) / L;
        for (int64_t e = 0; e < p.Dv; ++e) orow[e] *= inv;
      }
      if (w) finish_weights(b, h, i, key_limit(b, i), M, L);
    }
  }

  void run() {
    if (p.Tq <= 2)
      run_decode();
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
