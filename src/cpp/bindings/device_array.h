// A GPU array imported through DLPack. The Python layer hands over a capsule that it asked the
// array's library for with the launch stream (so the producer has ordered its pending work
// before the launch); nanobind consumes it and keeps the producer's buffer alive for the call.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "attnkit/errors.h"
#include "attnkit/params.h"

namespace attnkit::bindings {

namespace nb = nanobind;

class DeviceArray {
 public:
  DeviceArray(nb::ndarray<> a, const char* op, const char* name) : a_(std::move(a)), op_(op), name_(name) {
    if (a_.device_type() != nb::device::cuda::value)
      throw TypeError(std::string(op) + ": " + name + " must live on a CUDA device, got DLPack device type " +
                      std::to_string(a_.device_type()));
  }

  int device() const { return a_.device_id(); }
  int ndim() const { return int(a_.ndim()); }
  int64_t shape(int i) const { return int64_t(a_.shape(size_t(i))); }
  int64_t stride(int i) const { return a_.stride(size_t(i)); }
  void* data() const { return a_.data(); }
  const char* name() const { return name_; }

  // The floating types the GPU kernels take; false for anything else.
  bool float_dtype(DType* t) const {
    const auto dt = a_.dtype();
    if (dt.lanes != 1) return false;
    if (dt.code == uint8_t(nb::dlpack::dtype_code::Float) && dt.bits == 32) return *t = DType::f32, true;
    if (dt.code == uint8_t(nb::dlpack::dtype_code::Float) && dt.bits == 64) return *t = DType::f64, true;
    if (dt.code == uint8_t(nb::dlpack::dtype_code::Float) && dt.bits == 16) return *t = DType::f16, true;
    if (dt.code == uint8_t(nb::dlpack::dtype_code::Bfloat) && dt.bits == 16) return *t = DType::bf16, true;
    return false;
  }
  bool is_bool() const {
    const auto dt = a_.dtype();
    return dt.lanes == 1 && dt.bits == 8 && dt.code == uint8_t(nb::dlpack::dtype_code::Bool);
  }
  bool is_int64() const {
    const auto dt = a_.dtype();
    return dt.lanes == 1 && dt.bits == 64 && dt.code == uint8_t(nb::dlpack::dtype_code::Int);
  }
  std::string dtype_name() const {
    const auto dt = a_.dtype();
    static const char* const codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
    const std::string code = dt.code < 7 ? codes[dt.code] : "code" + std::to_string(dt.code);
    return code + std::to_string(dt.bits) + (dt.lanes != 1 ? "x" + std::to_string(dt.lanes) : "");
  }
  std::string shape_str() const {
    std::string s = "(";
    for (int i = 0; i < ndim(); ++i) s += (i ? ", " : "") + std::to_string(shape(i));
    return s + (ndim() == 1 ? ",)" : ")");
  }
  // ValueError "<op>: <name> must have shape (...), got (...)" unless the shape is exactly `want`.
  void require_shape(const std::vector<int64_t>& want) const {
    bool ok = ndim() == int(want.size());
    for (size_t i = 0; ok && i < want.size(); ++i) ok = shape(int(i)) == want[i];
    if (ok) return;
    std::string w = "(";
    for (size_t i = 0; i < want.size(); ++i) w += (i ? ", " : "") + std::to_string(want[i]);
    throw ValueError(std::string(op_) + ": " + name_ + " must have shape " + w + (want.size() == 1 ? ",)" : ")") +
                     ", got " + shape_str());
  }
  // Bytes [lo, hi) the elements span, as addresses (for overlap tests only).
  std::uintptr_t extent_lo() const { return extent(false); }
  std::uintptr_t extent_hi() const { return extent(true); }
  bool may_overlap(const DeviceArray& other) const {
    const std::uintptr_t lo = extent_lo(), hi = extent_hi(), other_lo = other.extent_lo(), other_hi = other.extent_hi();
    return lo < hi && other_lo < other_hi && lo < other_hi && other_lo < hi;  // empty arrays overlap nothing
  }
  // Whether the strides are exactly C order (axes of length 1 excepted).
  bool c_contiguous() const {
    int64_t expect = 1;
    for (int i = ndim() - 1; i >= 0; --i) {
      if (shape(i) != 1 && stride(i) != expect) return false;
      expect *= shape(i);
    }
    return true;
  }

 private:
  std::uintptr_t extent(bool high) const {
    const auto item = std::uintptr_t(a_.itemsize());
    std::uintptr_t at = reinterpret_cast<std::uintptr_t>(a_.data());
    for (int i = 0; i < ndim(); ++i) {
      if (shape(i) == 0) return reinterpret_cast<std::uintptr_t>(a_.data());
      const int64_t s = stride(i);
      const std::uintptr_t reach = std::uintptr_t(s < 0 ? -s : s) * item * std::uintptr_t(shape(i) - 1);
      if (high && s > 0) at += reach;
      if (!high && s < 0) at -= reach;
    }
    return high ? at + item : at;
  }

  nb::ndarray<> a_;
  const char* op_;
  const char* name_;
};

}  // namespace attnkit::bindings
