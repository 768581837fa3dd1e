// One direction of an LSTM or GRU layer over a padded batch (RecurrentLayerParams in params.h),
// compiled once per ISA: per frame, the recurrent product h W_hh^T + b_hh on the packed-weight
// linear kernel, then the cell update in vectors. It replaces a per-frame Python loop whose NumPy
// calls cost ~30 us a frame, most of an utterance's encoding time (benchmarks/NOTES.md).
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

// Lanes [k, k + width) of gate `gate` of a row's G*H gate vector.
template <typename T> inline Vec<T> gate_of(const T* base, int64_t gate, int64_t H, int64_t k, int width) {
  const T* a = base + gate * H + k;
  return width == lanes<T>() ? load(a) : load_partial(a, width);
}
template <typename T> inline void put(T* a, Vec<T> v, int width) {
  if (width == lanes<T>()) store(a, v);
  else store_partial(a, v, width);
}

// torch.nn.LSTMCell on lanes [k, k + width) of one row: g the recurrent part (with b_hh), gx the
// input part; updates c and h.
template <typename T>
inline void lstm_cell(const T* g, const T* gx, T* c, T* h, int64_t H, int64_t k, int width) {
  using V = Vec<T>;
  auto get = [&](const T* base, int64_t gate) { return gate_of<T>(base, gate, H, k, width); };
  const V i = sigmoidv<T>(get(g, 0) + get(gx, 0)), f = sigmoidv<T>(get(g, 1) + get(gx, 1));
  const V gg = tanhv<T>(get(g, 2) + get(gx, 2)), o = sigmoidv<T>(get(g, 3) + get(gx, 3));
  const V c_old = width == lanes<T>() ? load(c + k) : load_partial(c + k, width);
  const V c_new = f * c_old + i * gg;
  put(c + k, c_new, width);
  put(h + k, o * tanhv<T>(c_new), width);
}

// torch.nn.GRUCell on lanes [k, k + width) of one row: n = tanh(gx_n + r (h W_hn^T + b_hn)),
// h' = (1 - z) n + z h, in the order of attnkit.asr.rnn.gru_from_gates.
template <typename T>
inline void gru_cell(const T* g, const T* gx, T* h, int64_t H, int64_t k, int width) {
  using V = Vec<T>;
  auto get = [&](const T* base, int64_t gate) { return gate_of<T>(base, gate, H, k, width); };
  const V r = sigmoidv<T>(get(gx, 0) + get(g, 0)), z = sigmoidv<T>(get(gx, 1) + get(g, 1));
  const V n = tanhv<T>(get(gx, 2) + r * get(g, 2));
  const V h_old = width == lanes<T>() ? load(h + k) : load_partial(h + k, width);
  put(h + k, (T(1) - z) * n + z * h_old, width);
}

template <typename T>
void run(const RecurrentLayerParams& p) {
  constexpr int W = lanes<T>();
  const bool lstm = p.cell == RecurrentCell::lstm;
  const int64_t H = p.H, G = (lstm ? 4 : 3) * H;
  std::vector<T> h(p.B * H, T(0)), c(lstm ? p.B * H : 0, T(0)), gates(p.B * G);
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
      for (int64_t k = 0; k < H; k += W) {
        const int width = int(std::min<int64_t>(W, H - k));
        if (lstm)
          lstm_cell<T>(gates.data() + r * G, gx + r * G, c.data() + r * H, h.data() + r * H, H, k, width);
        else
          gru_cell<T>(gates.data() + r * G, gx + r * G, h.data() + r * H, H, k, width);
      }
      std::copy(h.data() + r * H, h.data() + (r + 1) * H, out + r * H);
    }
  }
}

}  // namespace

void recurrent_layer(const RecurrentLayerParams& p) {
  if (p.dtype == DType::f32)
    run<float>(p);
  else
    run<double>(p);
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
