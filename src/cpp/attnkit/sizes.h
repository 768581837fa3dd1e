// Size arithmetic for the front doors. Sizes and element counts are int64_t everywhere; a
// product of them that would not fit is a request larger than any memory, reported as
// std::bad_alloc (MemoryError in Python) rather than left to wrap around.
#pragma once
#include <cstdint>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <new>

namespace attnkit {

inline int64_t checked_mul(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) throw std::bad_alloc();
  return r;
}

inline int64_t checked_add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) throw std::bad_alloc();
  return r;
}

// The product of non-negative sizes, checked.
inline int64_t checked_product(std::initializer_list<int64_t> sizes) {
  int64_t r = 1;
  for (int64_t s : sizes) r = checked_mul(r, s);
  return r;
}

// new T[n] whose failure is a std::bad_alloc raised here, not by the throwing operator new:
// sanitizer runtimes abort in that one instead of throwing (their nothrow form returns null).
template <typename T> std::unique_ptr<T[]> allocate_array(int64_t n) {
  checked_mul(n, int64_t(sizeof(T)));
  std::unique_ptr<T[]> p(new (std::nothrow) T[std::size_t(n)]);
  if (!p) throw std::bad_alloc();
  return p;
}

}  // namespace attnkit
