// Helpers shared by the binding files: turning nanobind ndarrays into pointers, dtypes and
// element strides, with errors that name the argument.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <string>

#include "attnkit/errors.h"
#include "attnkit/params.h"

namespace attnkit::bindings {

namespace nb = nanobind;

using InArray = nb::ndarray<nb::ro, nb::device::cpu>;   // read-only or writable host array
using OutArray = nb::ndarray<nb::device::cpu>;          // writable host array

inline std::string shape_str(const nb::ndarray<nb::ro, nb::device::cpu>& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

inline bool is_float(const nb::dlpack::dtype& t, int bits) {
  return t.code == uint8_t(nb::dlpack::dtype_code::Float) && t.bits == bits && t.lanes == 1;
}

inline DType float_dtype(const char* op, const char* arg, const nb::dlpack::dtype& t) {
  if (is_float(t, 32)) return DType::f32;
  if (is_float(t, 64)) return DType::f64;
  throw TypeError(std::string(op) + ": " + arg + " must be float32 or float64");
}

inline void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw ValueError(std::string(op) + ": " + what);
}

// Element strides of a rank-4 array [n0, n1, n2, last], requiring a unit stride on the last axis
// (unless it has length 1).
inline void strides3(const char* op, const char* arg, const InArray& a, int64_t out[3]) {
  require(a.ndim() == 4, op, std::string(arg) + " must be 4-D");
  require(a.shape(3) == 1 || a.stride(3) == 1, op,
          std::string(arg) + " must have a contiguous last axis, got stride " + std::to_string(a.stride(3)));
  for (int i = 0; i < 3; ++i) out[i] = a.stride(i);
}

}  // namespace attnkit::bindings
