// One direction of an LSTM layer over a padded batch (LstmLayerParams in params.h), compiled
// once per ISA: per frame, the recurrent product h W_hh^T + b_hh on the packed-weight linear
// kernel, then the cell update in vectors. It replaces a per-frame Python loop whose NumPy calls
// cost ~30 us a frame, most of an utterance's encoding time (benchmarks/NOTES.md).
#include <algorithm>
#include <vector>

#include "attnkit/params.h"
#include "cpu/isa.h"
#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {

void linear(const LinearParams& p);  // cpu/linear.cc, the same ISA

namespace {

// sigmoid(x) = 0.5 tanh(x / 2) + 0.5, as attnkit.asr.rnn writes it.
template <typename T> inline Vec<T> sigmoidv(Vec<T> x) { return T(0.5) * tanhv<T>(T(0.5) * x) + T(0.5); }

// c, h of one row, lanes [k, k + width): gates g (the recurrent part, with b_hh) plus gx.
template <typename T>
inline void cell(const T* g, const T* gx, T* c, T* h, int64_t H, int64_t k, int width) {
  using V = Vec<T>;
  auto get = [&](const T* base, int64_t gate) {
    const T* a = base + gate * H + k;
    return width == lanes<T>() ? load(a) : load_partial(a, width);
  };
  const V i = sigmoidv<T>(get(g, 0) + get(gx, 0)), f = sigmoidv<T>(get(g, 1) + get(gx, 1));
  const V gg = tanhv<T>(get(g, 2) + get(gx, 2)), o = sigmoidv<T>(get(g, 3) + get(gx, 3));
  const V c_old = width == lanes<T>() ? load(c + k) : load_partial(c + k, width);
  const V c_new = f * c_old + i * gg;
  const V h_new = o * tanhv<T>(c_new);
  if (width == lanes<T>()) {
    store(c + k, c_new);
    store(h + k, h_new);
  } else {
    store_partial(c + k, c_new, width);
    store_partial(h + k, h_new, width);
  }
}

template <typename T>
void run(const LstmLayerParams& p) {
  constexpr int W = lanes<T>();
  const int64_t H = p.H, G = 4 * H;
  std::vector<T> h(p.B * H, T(0)), c(p.B * H, T(0)), gates(p.B * G);
  for (int64_t s = 0; s < p.T; ++s) {
    const int64_t t = p.reverse ? p.T - 1 - s : s;
    const int64_t n = p.active[t];
    if (n == 0) continue;
    LinearParams lp;
    lp.dtype = p.dtype;
    lp.N = n, lp.K = H, lp.A = G;
    lp.x = h.data(), lp.w = p.w_hh, lp.packed = true, lp.bias = p.b_hh, lp.y = gates.data();
    linear(lp);
    const T* gx = static_cast<const T*>(p.gx) + t * p.B * G;
    T* out = static_cast<T*>(p.out) + t * p.B * H;
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t k = 0; k < H; k += W)
        cell<T>(gates.data() + r * G, gx + r * G, c.data() + r * H, h.data() + r * H, H, k,
                int(std::min<int64_t>(W, H - k)));
      std::copy(h.data() + r * H, h.data() + (r + 1) * H, out + r * H);
    }
  }
}

}  // namespace

void lstm_layer(const LstmLayerParams& p) {
  if (p.dtype == DType::f32)
    run<float>(p);
  else
    run<double>(p);
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
