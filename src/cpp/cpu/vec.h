// Portable SIMD through GCC/Clang vector extensions. Every kernel is written once against Vec<T>
// and compiled per ISA (CMake sets the flags and ATTNKIT_VEC_BYTES: 16 portable, 32 AVX2,
// 64 AVX-512), so the AVX-512 and AVX2 builds differ only in what the compiler emits.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#if defined(__SSE__)
#include <immintrin.h>
#endif

#ifndef ATTNKIT_VEC_BYTES
#error "ATTNKIT_VEC_BYTES must be set by the build (16, 32 or 64)"
#endif
#ifndef ATTNKIT_TILE_ROWS
#error "ATTNKIT_TILE_ROWS must be set by the build"
#endif

namespace attnkit::cpu::ATTNKIT_ISA {

constexpr int kVecBytes = ATTNKIT_VEC_BYTES;
// Register tile: kTileRows rows x kTileVecs vectors of accumulators (6x2 of 16 registers on
// AVX2, 12x2 of 32 on AVX-512), leaving registers for the loaded vectors and one broadcast.
constexpr int kTileRows = ATTNKIT_TILE_ROWS;
constexpr int kTileVecs = 2;

template <typename T> struct VecTraits;
template <> struct VecTraits<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
  typedef int32_t VI __attribute__((vector_size(kVecBytes)));
};
template <> struct VecTraits<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
  typedef int64_t VI __attribute__((vector_size(kVecBytes)));
};

template <typename T> using Vec = typename VecTraits<T>::V;
template <typename T> using VecI = typename VecTraits<T>::VI;
template <typename T> constexpr int lanes() { return kVecBytes / int(sizeof(T)); }

// A brace list of identical lanes is what GCC turns into one broadcast (vbroadcastss from
// memory); `Vec{} + x` costs an add and a broadcast (0 + x is not x for x = -0), and a
// lane-by-lane fill costs a chain of inserts.
template <typename T, std::size_t... I> inline Vec<T> splat_lanes(T x, std::index_sequence<I...>) {
  return Vec<T>{((void)I, x)...};
}
template <typename T> inline Vec<T> splat(T x) {
  return splat_lanes<T>(x, std::make_index_sequence<std::size_t(lanes<T>())>());
}
template <typename T> inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T> inline void store(T* p, Vec<T> v) { std::memcpy(p, &v, sizeof(v)); }
// Lanes [0, n) set: the mask of a partial load or store.
template <typename T> inline VecI<T> first_lanes(int n) {
  VecI<T> index;
  for (int i = 0; i < lanes<T>(); ++i) index[i] = i;
  return index < n;
}
// Loads n < lanes elements and zero-fills the rest (tails). A masked load where the ISA has one
// (memory past n is never touched, as with the copy): a copy of n elements into a vector on the
// stack costs a call and a store-forwarding stall, which made an SDPA decoder step with D = 36
// (4 lanes left after 32) take 2-4x as long as one with D = 32 or 40 (NOTES.md, SDPA 10).
template <typename T> inline Vec<T> load_partial(const T* p, int n) {
#if defined(__AVX512F__) && ATTNKIT_VEC_BYTES == 64
  if constexpr (sizeof(T) == 4)
    return (Vec<T>)_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p);
  else
    return (Vec<T>)_mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), p);
#elif defined(__AVX2__) && ATTNKIT_VEC_BYTES == 32
  if constexpr (sizeof(T) == 4)
    return (Vec<T>)_mm256_maskload_ps(p, (__m256i)first_lanes<T>(n));
  else
    return (Vec<T>)_mm256_maskload_pd(p, (__m256i)first_lanes<T>(n));
#else
  Vec<T> v = {};
  std::memcpy(&v, p, sizeof(T) * n);
  return v;
#endif
}
template <typename T> inline void store_partial(T* p, Vec<T> v, int n) {
#if defined(__AVX512F__) && ATTNKIT_VEC_BYTES == 64
  if constexpr (sizeof(T) == 4)
    _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), (__m512)v);
  else
    _mm512_mask_storeu_pd(p, __mmask8((1u << n) - 1), (__m512d)v);
#elif defined(__AVX2__) && ATTNKIT_VEC_BYTES == 32
  if constexpr (sizeof(T) == 4)
    _mm256_maskstore_ps(p, (__m256i)first_lanes<T>(n), (__m256)v);
  else
    _mm256_maskstore_pd(p, (__m256i)first_lanes<T>(n), (__m256d)v);
#else
  std::memcpy(p, &v, sizeof(T) * n);
#endif
}

// The bits of a float vector as integers and back: a cast between vector types of one size
// reinterprets the bits (GCC vector extensions). reinterpret_cast through references instead is
// a strict-aliasing violation that GCC exploits: it once read the bits of a spilled float vector
// before the store that produced them (the float64 energies went wrong).
template <typename T> inline VecI<T> bits_of(Vec<T> v) { return (VecI<T>)v; }
template <typename T> inline Vec<T> from_bits(VecI<T> v) { return (Vec<T>)v; }

// lanes<float>() IEEE float16 values (their bits) widened to float32, exactly: packed Linear
// weights are kept in half precision when every weight is a float16 value (a model stored in
// float16), which halves what a decoder step's products read (benchmarks/NOTES.md, Linear 9).
// F16C's conversion where the ISA has it; otherwise integer field arithmetic that needs no
// denormal float (so a DAZ mode set by another library cannot turn small weights into zeros).
inline Vec<float> load_half(const uint16_t* p) {
#if defined(__AVX512F__) && ATTNKIT_VEC_BYTES == 64
  return reinterpret_cast<Vec<float>>(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(__F16C__) && ATTNKIT_VEC_BYTES == 32
  return reinterpret_cast<Vec<float>>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  using VI = VecI<float>;
  typedef uint16_t VH __attribute__((vector_size(kVecBytes / 2)));
  VH h;
  std::memcpy(&h, p, sizeof(h));
  const VI bits = __builtin_convertvector(h, VI);
  const VI exponent = (bits >> 10) & 0x1f, mantissa = bits & 0x3ff, sign = (bits & 0x8000) << 16;
  // Normal: rebias the exponent (15 -> 127); inf/NaN: all-ones exponent; subnormal: m * 2^-24.
  const VI normal = ((exponent + 112) << 23) | (mantissa << 13);
  const VI special = (VI{} + 0x7f800000) | (mantissa << 13);
  const VI subnormal = bits_of<float>(__builtin_convertvector(mantissa, Vec<float>) * (1.0f / 16777216.0f));
  const VI magnitude = exponent == 0 ? subnormal : (exponent == 31 ? special : normal);
  return from_bits<float>(sign | magnitude);
#endif
}

template <typename T> inline Vec<T> vmax(Vec<T> a, Vec<T> b) { return a > b ? a : b; }
template <typename T> inline T hsum(Vec<T> v) {
  T s = 0;
  for (int i = 0; i < lanes<T>(); ++i) s += v[i];
  return s;
}
template <typename T> inline T hmax(Vec<T> v) {
  T m = v[0];
  for (int i = 1; i < lanes<T>(); ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// min(max(x, lo), hi) with NaN passing through, in one min and one max instruction where the
// ISA has them (x86's min/max return their second operand when either is NaN). The ternaries
// that express this portably compile to compare + blend pairs, twice the work in a hot loop.
template <typename T> inline Vec<T> clamp(Vec<T> x, T lo, T hi) {
  const Vec<T> vlo = splat<T>(lo), vhi = splat<T>(hi);
#if defined(__AVX512F__) && ATTNKIT_VEC_BYTES == 64
  if constexpr (sizeof(T) == 4)
    return reinterpret_cast<Vec<T>>(_mm512_min_ps(reinterpret_cast<__m512>(vhi), _mm512_max_ps(reinterpret_cast<__m512>(vlo), reinterpret_cast<__m512>(x))));
  else
    return reinterpret_cast<Vec<T>>(_mm512_min_pd(reinterpret_cast<__m512d>(vhi), _mm512_max_pd(reinterpret_cast<__m512d>(vlo), reinterpret_cast<__m512d>(x))));
#elif defined(__AVX__) && ATTNKIT_VEC_BYTES == 32
  if constexpr (sizeof(T) == 4)
    return reinterpret_cast<Vec<T>>(_mm256_min_ps(reinterpret_cast<__m256>(vhi), _mm256_max_ps(reinterpret_cast<__m256>(vlo), reinterpret_cast<__m256>(x))));
  else
    return reinterpret_cast<Vec<T>>(_mm256_min_pd(reinterpret_cast<__m256d>(vhi), _mm256_max_pd(reinterpret_cast<__m256d>(vlo), reinterpret_cast<__m256d>(x))));
#elif defined(__SSE2__) && ATTNKIT_VEC_BYTES == 16
  if constexpr (sizeof(T) == 4)
    return reinterpret_cast<Vec<T>>(_mm_min_ps(reinterpret_cast<__m128>(vhi), _mm_max_ps(reinterpret_cast<__m128>(vlo), reinterpret_cast<__m128>(x))));
  else
    return reinterpret_cast<Vec<T>>(_mm_min_pd(reinterpret_cast<__m128d>(vhi), _mm_max_pd(reinterpret_cast<__m128d>(vlo), reinterpret_cast<__m128d>(x))));
#else
  x = vlo > x ? vlo : x;
  return vhi < x ? vhi : x;
#endif
}

// In-register transpose of a W x W block (W = lanes): after it, r[d][i] is the old r[i][d].
// log2(W) rounds of interleaving row i with row i + W/2 (a perfect shuffle); each zip is one
// compile-time __builtin_shuffle, which GCC lowers to unpack/permute instructions.
template <typename T, std::size_t... I>
inline VecI<T> zip_mask(bool high, std::index_sequence<I...>) {
  constexpr int w = lanes<T>();
  return VecI<T>{static_cast<typename std::remove_reference<decltype(VecI<T>{}[0])>::type>(
      (high ? w / 2 : 0) + int(I) / 2 + (I % 2 ? w : 0))...};
}
template <typename T> inline void transpose_block(Vec<T>* r) {
  constexpr int w = lanes<T>();
  const auto seq = std::make_index_sequence<std::size_t(w)>();
  const VecI<T> lo = zip_mask<T>(false, seq), hi = zip_mask<T>(true, seq);
  for (int round = 1; round < w; round *= 2) {
    Vec<T> next[w];
    for (int i = 0; i < w / 2; ++i) {
      next[2 * i] = __builtin_shuffle(r[i], r[i + w / 2], lo);
      next[2 * i + 1] = __builtin_shuffle(r[i], r[i + w / 2], hi);
    }
    for (int i = 0; i < w; ++i) r[i] = next[i];
  }
}

// Lane i of the result is the sum of the lanes of r[i], for W = lanes vectors. Each round pairs
// the vectors and adds the two halves of each block of both (block sizes W, W/2, ..., 2): W - 1
// additions and 2(W - 1) shuffles, where transpose_block and a sum take W log2(W) shuffles. The
// rounds leave the sums in bit-reversed lane order, so the vectors enter in bit-reversed slots.
template <typename T, std::size_t... I>
inline VecI<T> fold_mask(int block, bool high, std::index_sequence<I...>) {
  constexpr int w = lanes<T>();
  const int half = block / 2, shift = high ? half : 0;
  return VecI<T>{static_cast<typename std::remove_reference<decltype(VecI<T>{}[0])>::type>(
      int(I) % block < half ? int(I) + shift : w + int(I) - half + shift)...};
}
constexpr int bit_reverse(int i, int width) {
  int r = 0;
  for (int bit = 1; bit < width; bit *= 2) r = r * 2 + (i & bit ? 1 : 0);
  return r;
}
template <typename T> inline Vec<T> sum_each(const Vec<T>* r) {
  constexpr int w = lanes<T>();
  const auto seq = std::make_index_sequence<std::size_t(w)>();
  Vec<T> a[w];
  for (int i = 0; i < w; ++i) a[bit_reverse(i, w)] = r[i];
  for (int block = w, n = w; block > 1; block /= 2, n /= 2) {
    const VecI<T> lo = fold_mask<T>(block, false, seq), hi = fold_mask<T>(block, true, seq);
    for (int i = 0; i < n / 2; ++i)
      a[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], lo) + __builtin_shuffle(a[2 * i], a[2 * i + 1], hi);
  }
  return a[0];
}

// 2^x, vectorised: x = n + f with n = round(x), |f| <= 1/2; 2^f by a polynomial, 2^n through the
// exponent bits.
template <typename T> struct Exp2Consts;
template <> struct Exp2Consts<float> {
  static constexpr int kMantissa = 23, kBias = 127;
  static constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
};
template <> struct Exp2Consts<double> {
  static constexpr int kMantissa = 52, kBias = 1023;
  static constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
};

// 2^f for |f| <= 1/2. float: degree 5, least-squares fit on 4000 Chebyshev nodes of [-1/2, 1/2]
// made for attnkit with NumPy; relative error < 7.7e-8 (about one ulp), one FMA and one multiply
// fewer than the degree-6 Taylor series it replaced (1.2e-7).
inline Vec<float> exp2_poly(Vec<float> f) {
  Vec<float> p = splat<float>(1.3266970636e-3f);
  p = p * f + 9.6754599362e-3f;
  p = p * f + 5.5507425219e-2f;
  p = p * f + 2.4022121727e-1f;
  p = p * f + 6.9314694405e-1f;
  return p * f + 1.0000001192f;
}
// double: Taylor series of e^(f ln 2) to degree 12, relative error < 3e-16.
inline Vec<double> exp2_poly(Vec<double> f) {
  constexpr int kDegree = 12;
  const Vec<double> g = f * 0.69314718055994530942;
  double inv_fact[kDegree + 1];
  inv_fact[0] = 1;
  for (int k = 1; k <= kDegree; ++k) inv_fact[k] = inv_fact[k - 1] / double(k);
  Vec<double> p = splat<double>(inv_fact[kDegree]);
#pragma GCC unroll 16
  for (int k = kDegree - 1; k >= 0; --k) p = p * g + inv_fact[k];
  return p;
}

// x rounded to the nearest integer (ties to even, as the 1.5 * 2^mantissa trick under the default
// rounding mode, so both give the same bits): one instruction where the ISA has it, two additions
// otherwise. In the additive kernel's tanh the one instruction (and exponent_step's conversion)
// took an AttLoc step from 441 to 420 us (benchmarks/NOTES.md, additive 18).
#if defined(__SSE4_1__)
constexpr int kRoundNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
#endif
template <typename T> inline Vec<T> round_nearest(Vec<T> x) {
#if defined(__AVX512F__) && ATTNKIT_VEC_BYTES == 64
  if constexpr (sizeof(T) == 4)
    return reinterpret_cast<Vec<T>>(_mm512_roundscale_ps(reinterpret_cast<__m512>(x), kRoundNearest));
  else
    return reinterpret_cast<Vec<T>>(_mm512_roundscale_pd(reinterpret_cast<__m512d>(x), kRoundNearest));
#elif defined(__AVX__) && ATTNKIT_VEC_BYTES == 32
  if constexpr (sizeof(T) == 4)
    return reinterpret_cast<Vec<T>>(_mm256_round_ps(reinterpret_cast<__m256>(x), kRoundNearest));
  else
    return reinterpret_cast<Vec<T>>(_mm256_round_pd(reinterpret_cast<__m256d>(x), kRoundNearest));
#elif defined(__SSE4_1__) && ATTNKIT_VEC_BYTES == 16
  if constexpr (sizeof(T) == 4)
    return reinterpret_cast<Vec<T>>(_mm_round_ps(reinterpret_cast<__m128>(x), kRoundNearest));
  else
    return reinterpret_cast<Vec<T>>(_mm_round_pd(reinterpret_cast<__m128d>(x), kRoundNearest));
#else
  return (x + Exp2Consts<T>::kRound) - Exp2Consts<T>::kRound;  // |x| < 2^(mantissa - 1)
#endif
}

// For integral n (|n| < 2^22), n shifted into the exponent field: added to the bits of a normal
// float y it gives y * 2^n. float converts n in one instruction; double goes through the rounding
// constant's bits (a packed double-to-int64 conversion needs AVX-512DQ).
template <typename T> inline VecI<T> exponent_step(Vec<T> n) {
  using C = Exp2Consts<T>;
  if constexpr (sizeof(T) == 4)
    return __builtin_convertvector(n, VecI<T>) << C::kMantissa;
  else
    return bits_of<T>(n + C::kRound) << C::kMantissa;
}

// 2^x for x already within the normal exponent range [1 - bias, bias].
template <typename T> inline Vec<T> exp2_core(Vec<T> x) {
  using C = Exp2Consts<T>;
  const Vec<T> n = round_nearest<T>(x);
  const VecI<T> bits = (__builtin_convertvector(n, VecI<T>) + C::kBias) << C::kMantissa;
  return exp2_poly(x - n) * from_bits<T>(bits);
}

// 2^x for |x| well inside the exponent range (|x| < 100 for float): like exp2_core, but 2^n is
// applied by adding n to the exponent field of the polynomial (an integer add instead of a
// multiply: the multiply pipes are what the energy loops run out of). NaN stays NaN.
template <typename T> inline Vec<T> exp2_small(Vec<T> x) {
  const Vec<T> n = round_nearest<T>(x);
  return from_bits<T>(bits_of<T>(exp2_poly(x - n)) + exponent_step<T>(n));
}

// 2^x for x <= 0 (softmax terms s - max): below the smallest normal exponent, -inf (a masked
// score) included, the result is exactly 0; NaN stays NaN.
template <typename T> inline Vec<T> exp2v(Vec<T> x) {
  const T lo = T(1 - Exp2Consts<T>::kBias);
  const Vec<T> r = exp2_core<T>(x < lo ? splat<T>(lo) : x);
  return x != x ? x : (x < lo ? splat<T>(T(0)) : r);
}

// tanh(x) = 1 - 2 / (2^(2 log2(e) x) + 1), |x| clamped where tanh is +-1 to working precision
// (9 in float32, 19.5 in float64); NaN passes through. The error is absolute, ~1e-7 in float32
// and ~2e-16 in float64 (relative near 0, where tanh(x) ~ x, it grows).
template <typename T> inline Vec<T> tanhv(Vec<T> x) {
  const T lim = sizeof(T) == 8 ? T(19.5) : T(9);
  const Vec<T> y = clamp<T>(x, -lim, lim) * T(2 * 1.4426950408889634);
  return T(1) - T(2) / (exp2_small<T>(y) + T(1));
}

// ln(x) for x >= the smallest normal number, +inf and NaN passing through (0 and negative x are
// not handled: callers pass sums >= 1). x = 2^e m with m in [sqrt(1/2), sqrt(2)); ln(m) =
// 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.172, by its series sum s^(2k+1) / (2k + 1),
// whose terms shrink by s^2 < 0.03: 6 terms for float, 12 for double (truncation < 1e-9 and
// < 1e-19 relative). The exponent reaches the float as its bits under 2^52's (double has no
// packed int64 conversion before AVX-512DQ).
template <typename T> inline Vec<T> logv(Vec<T> x) {
  using C = Exp2Consts<T>;
  using I = typename std::remove_reference<decltype(VecI<T>{}[0])>::type;
  constexpr I kMantMask = (I(1) << C::kMantissa) - 1;
  constexpr I kOneBits = I(C::kBias) << C::kMantissa;
  const VecI<T> bits = bits_of<T>(x);
  Vec<T> m = from_bits<T>((bits & kMantMask) | kOneBits);  // [1, 2)
  Vec<T> e;
  if constexpr (sizeof(T) == 4) {
    e = __builtin_convertvector((bits >> C::kMantissa) - C::kBias, Vec<T>);
  } else {
    constexpr I kTwo52Bits = I(0x4330000000000000);  // the bits of 2^52
    e = from_bits<T>((bits >> C::kMantissa) | kTwo52Bits) - (T(4503599627370496.0) + T(C::kBias));
  }
  const auto big = m > T(1.4142135623730951);
  m = big ? m * T(0.5) : m;
  e = big ? e + T(1) : e;
  const Vec<T> s = (m - T(1)) / (m + T(1)), z = s * s;
  constexpr int kTerms = sizeof(T) == 4 ? 6 : 12;
  Vec<T> p = splat<T>(T(1) / T(2 * kTerms - 1));
#pragma GCC unroll 16
  for (int k = kTerms - 2; k >= 0; --k) p = p * z + T(1) / T(2 * k + 1);
  const Vec<T> r = e * T(0.6931471805599453) + T(2) * s * p;
  return x == x && x < std::numeric_limits<T>::infinity() ? r : x;
}

// out[j] = ln(e^a[j] + e^b[j]) for J vectors, as NumPy's logaddexp: max(a, b) + ln(1 + e^-|a - b|);
// a + ln 2 when a == b (also two infinities of one sign); NaN when either is NaN. Stage by stage
// over the J vectors, so that their ~100-cycle chains (an exp, then a log with a division)
// interleave in the instruction stream instead of filling the scheduler one chain at a time
// (as the additive kernel's tanh: benchmarks/NOTES.md, additive 9).
template <typename T, int J> inline void log_add_exp(const Vec<T>* a, const Vec<T>* b, Vec<T>* out) {
  Vec<T> m[J], u[J];
  for (int j = 0; j < J; ++j) {
    const Vec<T> d = a[j] - b[j];
    const Vec<T> neg = a[j] == b[j] ? splat<T>(T(0)) : (d < T(0) ? d : -d);  // -|a - b|; NaN stays
    m[j] = a[j] > b[j] ? a[j] : b[j];
    u[j] = neg * T(1.4426950408889634);
  }
  for (int j = 0; j < J; ++j) u[j] = T(1) + exp2v<T>(u[j]);
  for (int j = 0; j < J; ++j) out[j] = m[j] + logv<T>(u[j]);
}

}  // namespace attnkit::cpu::ATTNKIT_ISA
