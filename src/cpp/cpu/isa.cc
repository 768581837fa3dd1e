#include "cpu/isa.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "attnkit/errors.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace attnkit::cpu {
namespace {

struct CpuFeatures {
  bool avx2 = false;    // AVX2 + FMA, YMM state saved by the OS
  bool avx512 = false;  // AVX-512 F/DQ/BW/VL, ZMM and opmask state saved by the OS
};

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12);
  if (!osxsave || !avx) return f;
  // XCR0 says which register files the OS saves on a context switch (as MLAS checks):
  // bits 1-2 SSE/AVX state, bits 5-7 the AVX-512 opmask and upper ZMM state.
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const uint64_t xcr0 = (uint64_t(hi) << 32) | lo;
  const bool ymm_saved = (xcr0 & 0x6) == 0x6;
  const bool zmm_saved = (xcr0 & 0xe6) == 0xe6;
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) && (b & (1u << 31));
  f.avx2 = ymm_saved && avx2 && fma;
  f.avx512 = f.avx2 && zmm_saved && avx512;
#endif
  return f;
}

const CpuFeatures& features() {
  static const CpuFeatures f = detect();
  return f;
}

Isa parse(const std::string& name) {
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512, Isa::wide16})
    if (name == isa_name(isa)) return isa;
  throw ValueError("cpu isa must be one of 'portable', 'avx2', 'avx512', got '" + name + "'");
}

bool compiled(Isa isa) {
  switch (isa) {
    case Isa::portable: return true;
#ifdef ATTNKIT_HAVE_AVX2
    case Isa::avx2: return true;
#endif
#ifdef ATTNKIT_HAVE_AVX512
    case Isa::avx512: return true;
    case Isa::wide16: return true;
#endif
    default: return false;
  }
}

void check_usable(Isa isa) {
  if (!compiled(isa))
    throw UnsupportedError(std::string("cpu isa '") + isa_name(isa) + "' was not compiled into this build");
  if (!cpu_supports(isa))
    throw UnsupportedError(std::string("cpu isa '") + isa_name(isa) +
                           "' is not supported by this CPU (best available: '" + isa_name(best_isa()) + "')");
}

Isa initial_isa() {
  Isa isa = best_isa();
  if (const char* env = std::getenv("ATTNKIT_CPU_ISA")) {
    if (*env) {
      isa = parse(env);
      check_usable(isa);
    }
  }
  return isa;
}

std::atomic<int> g_active{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::portable: return "portable";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::wide16: return "wide16";
  }
  return "?";
}

std::vector<Isa> compiled_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512})
    if (compiled(isa)) out.push_back(isa);
  return out;
}

bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::portable: return true;
    case Isa::avx2: return features().avx2;
    case Isa::avx512: return features().avx512;
    case Isa::wide16: return features().avx2;
  }
  return false;
}

Isa best_isa() {
  Isa best = Isa::portable;
  for (Isa isa : compiled_isas())
    if (cpu_supports(isa)) best = isa;
  return best;
}

Isa active_isa() {
  int v = g_active.load(std::memory_order_relaxed);
  if (v < 0) {
    // An invalid ATTNKIT_CPU_ISA surfaces as an exception from the first call that dispatches
    // (and from attnkit's import, which calls this once).
    v = static_cast<int>(initial_isa());
    g_active.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

void set_active_isa(const std::string& name) {
  Isa isa = parse(name);
  check_usable(isa);
  g_active.store(static_cast<int>(isa), std::memory_order_relaxed);
}

}  // namespace attnkit::cpu
