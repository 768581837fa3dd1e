// Binding of the CTC prefix-score recursion on GPU arrays (CtcPrefixParams): imports the DLPack
// capsules, checks shapes, dtypes, layout and device, and launches on the caller's stream.
// Private: attnkit.asr.ctc_prefix.prefix_scores calls it for CuPy arrays.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attnkit/cuda.h"
#include "attnkit/errors.h"
#include "bindings/device_array.h"
#include "bindings/register.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "ctc_prefix_scores";

enum class Want { floats, int64, boolean };

void ctc_prefix_scores_cuda(nb::ndarray<> x_in, nb::ndarray<> label_in, nb::ndarray<> blank_in, nb::ndarray<> sum_in,
                            nb::ndarray<> rb_in, nb::ndarray<> repeat_in, bool first_label, int64_t start, int64_t end,
                            double logzero, nb::ndarray<> r_in, nb::ndarray<> psi_in,
                            std::optional<nb::ndarray<>> window_in, std::uintptr_t stream) {
  const DeviceArray x(x_in, kOp, "x"), label_col(label_in, kOp, "label_col"), blank_col(blank_in, kOp, "blank_col"),
      r_sum(sum_in, kOp, "r_sum"), r_blank(rb_in, kOp, "r_blank"), repeat(repeat_in, kOp, "repeat"), r(r_in, kOp, "r"),
      psi(psi_in, kOp, "psi");
  CtcPrefixParams p;
  if (!x.float_dtype(&p.dtype) || (p.dtype != DType::f32 && p.dtype != DType::f64))
    throw TypeError(std::string(kOp) + ": x must be float32 or float64 on the GPU, got " + x.dtype_name());
  if (x.ndim() != 2) throw ValueError(std::string(kOp) + ": x must be 2-D [T, M], got " + x.shape_str());
  if (label_col.ndim() != 2)
    throw ValueError(std::string(kOp) + ": label_col must be 2-D [N, C], got " + label_col.shape_str());
  p.T = x.shape(0), p.M = x.shape(1), p.N = label_col.shape(0), p.C = label_col.shape(1);
  const std::vector<std::pair<const DeviceArray*, std::pair<Want, std::vector<int64_t>>>> arrays = {
      {&x, {Want::floats, {p.T, p.M}}},         {&label_col, {Want::int64, {p.N, p.C}}},
      {&blank_col, {Want::int64, {p.N}}},       {&r_sum, {Want::floats, {p.T, p.N}}},
      {&r_blank, {Want::floats, {p.T, p.N}}},   {&repeat, {Want::boolean, {p.N, p.C}}},
      {&r, {Want::floats, {p.T, 2, p.N, p.C}}}, {&psi, {Want::floats, {p.N, p.C}}}};
  for (const auto& [a, want] : arrays) {
    a->require_shape(want.second);
    DType t;
    const bool ok = want.first == Want::int64 ? a->is_int64()
                    : want.first == Want::boolean ? a->is_bool()
                                                  : a->float_dtype(&t) && t == p.dtype;
    if (!ok) {
      const std::string expected = want.first == Want::int64 ? "int64" : want.first == Want::boolean ? "bool"
                                                                                                      : dtype_name(p.dtype);
      throw TypeError(std::string(kOp) + ": " + a->name() + " must be " + expected + ", got " + a->dtype_name());
    }
    if (!a->c_contiguous()) throw ValueError(std::string(kOp) + ": " + a->name() + " must be C-contiguous on the GPU");
    if (a->device() != x.device())
      throw ValueError(std::string(kOp) + ": every array must be on x's device (cuda:" + std::to_string(x.device()) +
                       "), got " + a->name() + " on cuda:" + std::to_string(a->device()));
  }
  for (const DeviceArray* out : {&r, &psi})
    for (const auto& [a, want] : arrays)
      if (a != out && out->may_overlap(*a))
        throw ValueError(std::string(kOp) + ": " + out->name() + " must not share memory with " + a->name());
  p.x = x.data(), p.r_sum = r_sum.data(), p.r_blank = r_blank.data();
  p.label_col = static_cast<const int64_t*>(label_col.data());
  p.blank_col = static_cast<const int64_t*>(blank_col.data());
  p.repeat = static_cast<const uint8_t*>(repeat.data());
  p.first_label = first_label, p.start = start, p.end = end, p.logzero = logzero;
  p.r = r.data(), p.psi = psi.data();
  std::optional<DeviceArray> window;
  if (window_in) {
    window.emplace(*window_in, kOp, "window");
    window->require_shape({2});
    if (!window->is_int64()) throw TypeError(std::string(kOp) + ": window must be int64, got " + window->dtype_name());
    if (!window->c_contiguous()) throw ValueError(std::string(kOp) + ": window must be C-contiguous on the GPU");
    if (window->device() != x.device())
      throw ValueError(std::string(kOp) + ": window must be on x's device (cuda:" + std::to_string(x.device()) +
                       "), got cuda:" + std::to_string(window->device()));
    for (const DeviceArray* out : {&r, &psi})
      if (out->may_overlap(*window))
        throw ValueError(std::string(kOp) + ": " + out->name() + " must not share memory with window");
    p.window = static_cast<const int64_t*>(window->data());
  }
  nb::gil_scoped_release release;
  cuda::ctc_prefix_scores(p, cuda::Launch{x.device(), stream});
}

}  // namespace

void register_ctc_prefix_cuda(nb::module_& m) {
  m.def("ctc_prefix_scores_cuda", &ctc_prefix_scores_cuda, nb::arg("x"), nb::arg("label_col"), nb::arg("blank_col"),
        nb::arg("r_sum"), nb::arg("r_blank"), nb::arg("repeat"), nb::arg("first_label"), nb::arg("start"),
        nb::arg("end"), nb::arg("logzero"), nb::arg("r"), nb::arg("psi"), nb::arg("window").none(), nb::arg("stream"),
        "Private: the CTC prefix-score recursion on GPU arrays (attnkit.asr.ctc_prefix).");
}

}  // namespace attnkit::bindings
