// CPU instruction sets: which were compiled, which this CPU and OS can run, which is active.
// Every kernel file under cpu/ is compiled once per ISA into namespace attnkit::cpu::<isa>;
// ATTNKIT_CPU_DISPATCH calls the active one.
#pragma once
#include <string>
#include <vector>

#include "attnkit/params.h"

namespace attnkit::cpu {

// Ordered from least to most capable. `wide16` is a test build: the AVX-512 tile geometry
// (16 float lanes, 12-row tiles) compiled with AVX2 flags, so that machines without AVX-512 still
// exercise the logic of the AVX-512 kernels. It is never chosen automatically.
enum class Isa : int { portable = 0, avx2 = 1, avx512 = 2, wide16 = 3 };

const char* isa_name(Isa isa);
std::vector<Isa> compiled_isas();   // built into this module (excluding wide16)
bool cpu_supports(Isa isa);         // cpuid + XCR0: the CPU has it and the OS saves its registers
Isa best_isa();                     // the most capable compiled ISA this CPU supports
Isa active_isa();                   // best_isa(), lowered by ATTNKIT_CPU_ISA or set_active_isa
void set_active_isa(const std::string& name);  // throws ValueError / UnsupportedError

#define ATTNKIT_DECLARE_CPU_KERNELS                                                         \
  void sdpa_forward(const ::attnkit::SdpaParams& p);                                      \
  void additive_step(const ::attnkit::AdditiveStepParams& p);                             \
  void linear(const ::attnkit::LinearParams& p);                                          \
  void pack_linear_weight(const ::attnkit::PackLinearParams& p);                          \
  void recurrent_layer(const ::attnkit::RecurrentLayerParams& p);                         \
  void cell_update(const ::attnkit::CellUpdateParams& p);                                 \
  void log_softmax(const ::attnkit::LogSoftmaxParams& p);                                 \
  void location_conv(const ::attnkit::LocationConvParams& p);                             \
  void weighted_sum(const ::attnkit::WeightedSumParams& p);                               \
  void ctc_prefix_scores(const ::attnkit::CtcPrefixParams& p);

namespace portable { ATTNKIT_DECLARE_CPU_KERNELS }
#ifdef ATTNKIT_HAVE_AVX2
namespace avx2 { ATTNKIT_DECLARE_CPU_KERNELS }
#endif
#ifdef ATTNKIT_HAVE_AVX512
namespace avx512 { ATTNKIT_DECLARE_CPU_KERNELS }
namespace wide16 { ATTNKIT_DECLARE_CPU_KERNELS }
#endif

#ifdef ATTNKIT_HAVE_AVX2
#define ATTNKIT_DISPATCH_AVX2(fn, ...) \
  case ::attnkit::cpu::Isa::avx2: return ::attnkit::cpu::avx2::fn(__VA_ARGS__);
#else
#define ATTNKIT_DISPATCH_AVX2(fn, ...)
#endif
#ifdef ATTNKIT_HAVE_AVX512
#define ATTNKIT_DISPATCH_AVX512(fn, ...)                                           \
  case ::attnkit::cpu::Isa::avx512: return ::attnkit::cpu::avx512::fn(__VA_ARGS__); \
  case ::attnkit::cpu::Isa::wide16: return ::attnkit::cpu::wide16::fn(__VA_ARGS__);
#else
#define ATTNKIT_DISPATCH_AVX512(fn, ...)
#endif

#define ATTNKIT_CPU_DISPATCH(fn, ...)                                      \
  switch (::attnkit::cpu::active_isa()) {                                  \
    ATTNKIT_DISPATCH_AVX512(fn, __VA_ARGS__)                               \
    ATTNKIT_DISPATCH_AVX2(fn, __VA_ARGS__)                                 \
    default: return ::attnkit::cpu::portable::fn(__VA_ARGS__);             \
  }

}  // namespace attnkit::cpu
