// A host array read through the Python buffer protocol. For NumPy arrays this costs about a
// tenth of nanobind's DLPack import (which builds a capsule per array: ~0.7 us each, measured),
// and per-call overhead is what a decoder step pays hundreds of times per utterance.
#pragma once
#include <nanobind/nanobind.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "attnkit/errors.h"

namespace attnkit::bindings {

namespace nb = nanobind;

enum class Kind : char { f32, f64, f16, boolean, i32, i64, other_int, other };

class HostArray {
 public:
  // Throws TypeError naming `name` when `obj` is not a strided host array.
  HostArray(nb::handle obj, const char* op, const char* name) : op_(op), name_(name) {
    if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_RECORDS_RO) != 0) {
      PyErr_Clear();
      throw TypeError(std::string(op) + ": " + name + " must be a numpy.ndarray, got " +
                      Py_TYPE(obj.ptr())->tp_name);
    }
    held_ = true;
    kind_ = parse_format(view_.format, view_.itemsize);
  }
  HostArray(const HostArray&) = delete;
  HostArray& operator=(const HostArray&) = delete;
  ~HostArray() {
    if (held_) PyBuffer_Release(&view_);
  }

  int ndim() const { return view_.ndim; }
  int64_t shape(int i) const { return view_.shape[i]; }
  Kind kind() const { return kind_; }
  bool readonly() const { return view_.readonly != 0; }
  void* data() const { return view_.buf; }
  int64_t itemsize() const { return view_.itemsize; }
  // Stride of axis i in elements; throws when it is not a whole number of elements.
  int64_t stride(int i) const {
    const int64_t s = view_.strides[i];
    if (s % view_.itemsize != 0)
      throw ValueError(std::string(op_) + ": " + name_ + " has a stride that is not a multiple of its item size");
    return s / view_.itemsize;
  }
  // Whether the data pointer is a multiple of the item size (NumPy allows unaligned views, e.g.
  // np.frombuffer with an offset; kernels read elements through typed pointers).
  bool aligned() const { return reinterpret_cast<std::uintptr_t>(view_.buf) % std::uintptr_t(view_.itemsize) == 0; }
  // Bytes [lo, hi) that the array's elements span, as addresses (for overlap tests only).
  std::uintptr_t extent_lo() const { return extent(false); }
  std::uintptr_t extent_hi() const { return extent(true); }
  // True when the two arrays' spans intersect (they may share elements).
  bool may_overlap(const HostArray& other) const {
    if (size_is_zero() || other.size_is_zero()) return false;
    return extent_lo() < other.extent_hi() && other.extent_lo() < extent_hi();
  }
  // True when two index tuples could address one element: sorted by |stride|, each axis of
  // length > 1 must step past everything the faster axes span (a zero stride never does).
  bool may_self_overlap() const {
    int axes[64];  // PyBUF_MAX_NDIM
    int n = 0;
    for (int i = 0; i < ndim() && n < 64; ++i)
      if (shape(i) > 1) axes[n++] = i;
    std::sort(axes, axes + n, [&](int a, int b) { return magnitude(view_.strides[a]) < magnitude(view_.strides[b]); });
    std::uintptr_t span = std::uintptr_t(view_.itemsize);
    for (int i = 0; i < n; ++i) {
      const std::uintptr_t step = magnitude(view_.strides[axes[i]]);
      if (step < span) return true;
      span += step * std::uintptr_t(shape(axes[i]) - 1);
    }
    return false;
  }
  std::string shape_str(int skip_axis = -1) const {
    std::string s = "(";
    int n = 0;
    for (int i = 0; i < ndim(); ++i) {
      if (i == skip_axis) continue;
      s += (n++ ? ", " : "") + std::to_string(shape(i));
    }
    return s + (n == 1 ? ",)" : ")");
  }
  const char* dtype_name() const {
    switch (kind_) {
      case Kind::f32: return "float32";
      case Kind::f64: return "float64";
      case Kind::f16: return "float16";
      case Kind::boolean: return "bool";
      case Kind::i32: return "int32";
      case Kind::i64: return "int64";
      case Kind::other_int: return "a non-int64 integer type";
      default: return view_.format ? view_.format : "unknown";
    }
  }

 private:
  static Kind parse_format(const char* f, Py_ssize_t itemsize) {
    if (!f) return Kind::other;
    if (*f == '@' || *f == '=' || (*f == '<' && is_little_endian())) ++f;
    if (f[0] == 0 || f[1] != 0) return Kind::other;  // non-native byte order or a struct type
    switch (f[0]) {
      case 'f': return Kind::f32;
      case 'd': return Kind::f64;
      case 'e': return Kind::f16;
      case '?': return Kind::boolean;
      case 'b': case 'B': case 'h': case 'H': case 'i': case 'I': case 'l': case 'L': case 'q': case 'Q':
        if (f[0] == 'i' && itemsize == 4) return Kind::i32;
        if ((f[0] == 'l' || f[0] == 'q') && itemsize == 8) return Kind::i64;
        return Kind::other_int;
      default: return Kind::other;
    }
  }
  static std::uintptr_t magnitude(Py_ssize_t x) { return x < 0 ? std::uintptr_t(0) - std::uintptr_t(x) : std::uintptr_t(x); }
  bool size_is_zero() const {
    for (int i = 0; i < ndim(); ++i)
      if (shape(i) == 0) return true;
    return false;
  }
  std::uintptr_t extent(bool high) const {
    std::uintptr_t at = reinterpret_cast<std::uintptr_t>(view_.buf);
    for (int i = 0; i < ndim(); ++i) {
      const Py_ssize_t s = view_.strides[i];
      const std::uintptr_t reach = magnitude(s) * std::uintptr_t(shape(i) - 1);
      if (high && s > 0) at += reach;
      if (!high && s < 0) at -= reach;
    }
    return high ? at + std::uintptr_t(view_.itemsize) : at;
  }
  static bool is_little_endian() {
    const uint16_t one = 1;
    return *reinterpret_cast<const uint8_t*>(&one) == 1;
  }

  Py_buffer view_{};
  bool held_ = false;
  Kind kind_ = Kind::other;
  const char* op_;
  const char* name_;
};

// Throws ValueError unless `a` is aligned, C-contiguous, of `kind` and exactly `shape`; the message
// names op, name and what the dtype must match (`of`: "the step's", "the layer's").
inline void require_c_array(const HostArray& a, const char* op, const char* name, Kind kind,
                            const std::vector<int64_t>& shape, const char* of) {
  bool ok = a.ndim() == int(shape.size()) && a.kind() == kind && a.aligned();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(int(i)) == shape[i];
  int64_t expect = 1;
  for (int i = a.ndim() - 1; ok && i >= 0; --i) {
    ok = a.shape(i) == 1 || a.stride(i) == expect;
    expect *= a.shape(i);
  }
  if (!ok) {
    std::string want = "(";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
    throw ValueError(std::string(op) + ": " + name + " must be an aligned, C-contiguous array of " + of +
                     " dtype and shape " + want + (shape.size() == 1 ? ",)" : ")") + ", got " + a.dtype_name() +
                     " " + a.shape_str());
  }
}

}  // namespace attnkit::bindings
