// The cell updates of torch.nn.LSTMCell and torch.nn.GRUCell on one vector of a row, from the
// gate pre-activations, shared by the encoder's recurrent layers (cpu/recurrent.cc) and the
// decoder's single steps (cpu/cell_update.cc). Gate order as torch: LSTM (i, f, g, o), GRU
// (r, z, n); a row's gates are G*H contiguous values, gate k at [k*H, (k+1)*H).
#pragma once
#include <cstdint>

#include "cpu/isa.h"
#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {

// sigmoid(x) = 0.5 tanh(x / 2) + 0.5, as attnkit.asr.rnn writes it.
template <typename T> inline Vec<T> sigmoidv(Vec<T> x) { return T(0.5) * tanhv<T>(T(0.5) * x) + T(0.5); }

// The first `width` lanes at a (the rest zero), and the same lanes stored.
template <typename T> inline Vec<T> get_lanes(const T* a, int width) {
  return width == lanes<T>() ? load(a) : load_partial(a, width);
}
template <typename T> inline void put(T* a, Vec<T> v, int width) {
  if (width == lanes<T>()) store(a, v);
  else store_partial(a, v, width);
}

// Lanes [k, k + width) of gate `gate` of a row's G*H gate vector.
template <typename T> inline Vec<T> gate_of(const T* base, int64_t gate, int64_t H, int64_t k, int width) {
  return get_lanes<T>(base + gate * H + k, width);
}

// torch.nn.LSTMCell on lanes [k, k + width) of one row: the gates are g + gx (gx null: g alone);
// c_new = f c + i g, h = o tanh(c_new). c and c_new may be the same array.
template <typename T>
inline void lstm_cell(const T* g, const T* gx, const T* c, T* c_new, T* h, int64_t H, int64_t k, int width) {
  using V = Vec<T>;
  auto get = [&](int64_t gate) {
    const V a = gate_of<T>(g, gate, H, k, width);
    return gx ? a + gate_of<T>(gx, gate, H, k, width) : a;
  };
  const V i = sigmoidv<T>(get(0)), f = sigmoidv<T>(get(1));
  const V gg = tanhv<T>(get(2)), o = sigmoidv<T>(get(3));
  const V cn = f * get_lanes<T>(c + k, width) + i * gg;
  put(c_new + k, cn, width);
  put(h + k, o * tanhv<T>(cn), width);
}

// torch.nn.GRUCell on lanes [k, k + width) of one row, g the recurrent part h W_hh^T + b_hh and
// gx the input part: n = tanh(gx_n + r g_n), h_new = (1 - z) n + z h, in the order of
// attnkit.asr.rnn.gru_from_gates. h and h_new may be the same array.
template <typename T>
inline void gru_cell(const T* g, const T* gx, const T* h, T* h_new, int64_t H, int64_t k, int width) {
  using V = Vec<T>;
  auto get = [&](const T* base, int64_t gate) { return gate_of<T>(base, gate, H, k, width); };
  const V r = sigmoidv<T>(get(gx, 0) + get(g, 0)), z = sigmoidv<T>(get(gx, 1) + get(g, 1));
  const V n = tanhv<T>(get(gx, 2) + r * get(g, 2));
  put(h_new + k, (T(1) - z) * n + z * get_lanes<T>(h + k, width), width);
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
