// One direction of an LSTM or GRU layer over a padded batch (RecurrentLayerParams in params.h),
// compiled once per ISA: per frame, the recurrent product h W_hh^T + b_hh on the packed-weight
// linear kernel, then the cell update in vectors. It replaces a per-frame Python loop whose NumPy
// calls cost ~30 us a frame, most of an utterance's encoding time (benchmarks/NOTES.md).
#include <algorithm>
#include <vector>

#include "attnkit/params.h"
#include "cpu/cells.h"
#include "cpu/isa.h"
#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {

void linear(const LinearParams& p);  // cpu/linear.cc, the same ISA

namespace {

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
    lp.x = h.data(), lp.w = p.w_hh, lp.packed = true, lp.half_panels = p.w_hh_half, lp.bias = p.b_hh;
    lp.y = gates.data();
    linear(lp);
    const T* gx = static_cast<const T*>(p.gx) + t * p.B * G;
    T* out = static_cast<T*>(p.out) + t * p.B * H;
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t k = 0; k < H; k += W) {
        const int width = int(std::min<int64_t>(W, H - k));
        if (lstm)
          lstm_cell<T>(gates.data() + r * G, gx + r * G, c.data() + r * H, c.data() + r * H, h.data() + r * H, H, k,
                       width);
        else
          gru_cell<T>(gates.data() + r * G, gx + r * G, h.data() + r * H, h.data() + r * H, H, k, width);
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
