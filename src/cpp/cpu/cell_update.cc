// One LSTM or GRU cell step for N rows from the gate pre-activations (CellUpdateParams in
// params.h), compiled once per ISA: the decoder's and the language model's cells. The products
// run before, on the linear kernel; this is the elementwise rest, which NumPy did in 8-9 calls
// whose float32 tanh is scalar here (~3-5 ns per element: 115 us for the [10, 4096] gates of a
// 1024-unit decoder at beam 10, benchmarks/NOTES.md).
#include <algorithm>

#include "attnkit/parallel.h"
#include "attnkit/params.h"
#include "cpu/cells.h"
#include "cpu/isa.h"
#include "cpu/vec.h"

namespace attnkit::cpu::ATTNKIT_ISA {
namespace {

template <typename T>
void rows(const CellUpdateParams& p, int64_t r0, int64_t r1) {
  constexpr int W = lanes<T>();
  const bool lstm = p.cell == RecurrentCell::lstm;
  const int64_t H = p.H, G = (lstm ? 4 : 3) * H;
  const T* g = static_cast<const T*>(p.g);
  const T* gx = static_cast<const T*>(p.gx);
  const T* state = static_cast<const T*>(p.state);
  T* h_new = static_cast<T*>(p.h_new);
  T* c_new = static_cast<T*>(p.c_new);
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t k = 0; k < H; k += W) {
      const int width = int(std::min<int64_t>(W, H - k));
      if (lstm)
        lstm_cell<T>(g + r * G, gx ? gx + r * G : nullptr, state + r * H, c_new + r * H, h_new + r * H, H, k, width);
      else
        gru_cell<T>(g + r * G, gx + r * G, state + r * H, h_new + r * H, H, k, width);
    }
}

}  // namespace

void cell_update(const CellUpdateParams& p) {
  // ~5 cycles per output (five tanh per LSTM output vector): threads pay from ~16k outputs on,
  // a [10, 1024] step's (~15 us), where a fork and join costs a few us.
  const bool parallel = p.N > 1 && p.N * p.H >= (int64_t(1) << 14);
  auto run = [&](int64_t, int64_t r0, int64_t r1) {
    if (p.dtype == DType::f32)
      rows<float>(p, r0, r1);
    else
      rows<double>(p, r0, r1);
  };
  if (parallel)
    parallel_for(p.N, run);
  else
    run(0, 0, p.N);
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
