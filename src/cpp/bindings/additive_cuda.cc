// Binding of the fused additive attention step on GPU arrays (see AdditiveStepParams): imports
// the DLPack capsules, rechecks what the kernel relies on (the attnkit.espnet classes have
// checked the caller's arguments) and launches on the caller's stream.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "attnkit/cuda.h"
#include "attnkit/errors.h"
#include "bindings/device_array.h"
#include "bindings/register.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "additive attention step";

// Every array of the step: C-contiguous, on one device, of the step's dtype (int64 for the maps).
struct DeviceArgs {
  std::vector<const DeviceArray*> all;
  DType dtype = DType::f32;

  const void* take(const DeviceArray& a, const std::vector<int64_t>& shape, bool is_index = false) {
    a.require_shape(shape);
    if (is_index) {
      if (!a.is_int64()) throw TypeError(std::string(kOp) + ": " + a.name() + " must be int64, got " + a.dtype_name());
    } else {
      DType t;
      if (!a.float_dtype(&t) || t != dtype)
        throw TypeError(std::string(kOp) + ": " + a.name() + " must have the step's dtype " + dtype_name(dtype) +
                        ", got " + a.dtype_name());
    }
    if (!a.c_contiguous()) throw ValueError(std::string(kOp) + ": " + a.name() + " must be C-contiguous on the GPU");
    if (!all.empty() && a.device() != all.front()->device())
      throw ValueError(std::string(kOp) + ": every array must be on P's device (cuda:" +
                       std::to_string(all.front()->device()) + "), got " + a.name() + " on cuda:" +
                       std::to_string(a.device()));
    all.push_back(&a);
    return a.data();
  }
};

void additive_step_cuda(nb::ndarray<> P_in, nb::ndarray<> values_in, nb::ndarray<> lengths_in,
                        nb::ndarray<> rows_in, nb::ndarray<> dec_z_in, nb::ndarray<> w_dec_in,
                        std::optional<nb::ndarray<>> att_in_in, std::optional<nb::ndarray<>> conv_w_in,
                        std::optional<nb::ndarray<>> proj_in, std::optional<nb::ndarray<>> loc_bias_in,
                        std::optional<nb::ndarray<>> gvec_in, double scaling, nb::ndarray<> context_in,
                        nb::ndarray<> weights_in, nb::ndarray<> peak_in, nb::ndarray<> scratch_in,
                        nb::ndarray<> query_in, std::uintptr_t stream) {
  const DeviceArray P(P_in, kOp, "P"), values(values_in, kOp, "values"), lengths(lengths_in, kOp, "lengths"),
      rows(rows_in, kOp, "rows"), dec_z(dec_z_in, kOp, "dec_z"), w_dec(w_dec_in, kOp, "w_dec"),
      context(context_in, kOp, "out_context"), weights(weights_in, kOp, "out_weights"),
      peak(peak_in, kOp, "out_peak"), scratch(scratch_in, kOp, "scratch"), query(query_in, kOp, "query");
  std::optional<DeviceArray> att_in, conv_w, proj, loc_bias, gvec;
  if (att_in_in) att_in.emplace(*att_in_in, kOp, "att_in");
  if (conv_w_in) conv_w.emplace(*conv_w_in, kOp, "conv_w");
  if (proj_in) proj.emplace(*proj_in, kOp, "conv_proj");
  if (loc_bias_in) loc_bias.emplace(*loc_bias_in, kOp, "loc_bias");
  if (gvec_in) gvec.emplace(*gvec_in, kOp, "gvec_w");

  AdditiveStepParams p;
  DeviceArgs args;
  if (!P.float_dtype(&args.dtype) || (args.dtype != DType::f32 && args.dtype != DType::f64))
    throw TypeError(std::string(kOp) + ": P must be float32 or float64 on the GPU, got " + P.dtype_name());
  p.dtype = args.dtype;
  if (P.ndim() != 3) throw ValueError(std::string(kOp) + ": P must be 3-D [B, T, A], got " + P.shape_str());
  p.B = P.shape(0), p.T = P.shape(1), p.A = P.shape(2);
  p.P = args.take(P, {p.B, p.T, p.A});
  if (values.ndim() != 3) throw ValueError(std::string(kOp) + ": values must be 3-D [B, T, Ev], got " + values.shape_str());
  p.Ev = values.shape(2);
  p.values = args.take(values, {p.B, p.T, p.Ev});
  p.lengths = static_cast<const int64_t*>(args.take(lengths, {p.B}, true));
  if (rows.ndim() != 1) throw ValueError(std::string(kOp) + ": rows must be 1-D [N], got " + rows.shape_str());
  p.N = rows.shape(0);
  p.rows = static_cast<const int64_t*>(args.take(rows, {p.N}, true));
  if (dec_z.ndim() != 2) throw ValueError(std::string(kOp) + ": dec_z must be 2-D [N, Dz], got " + dec_z.shape_str());
  p.Dz = dec_z.shape(1);
  p.dec_z = args.take(dec_z, {p.N, p.Dz});
  p.w_dec = args.take(w_dec, {p.A, p.Dz});
  if (att_in) {
    if (!conv_w || !proj) throw ValueError(std::string(kOp) + ": att_in needs conv_w and conv_proj");
    if (att_in->ndim() != 3 || conv_w->ndim() != 3)
      throw ValueError(std::string(kOp) + ": att_in [N, R, T] and conv_w [C, R, K] must be 3-D, got " +
                       att_in->shape_str() + " and " + conv_w->shape_str());
    p.R = att_in->shape(1);
    p.att_in = args.take(*att_in, {p.N, p.R, p.T});
    p.C = conv_w->shape(0), p.K = conv_w->shape(2);
    p.conv_w = args.take(*conv_w, {p.C, p.R, p.K});
    p.proj = args.take(*proj, {p.A, p.C});
    if (loc_bias) p.loc_bias = args.take(*loc_bias, {p.A});
  }
  if (gvec) p.gvec = args.take(*gvec, {p.A});
  p.scaling = scaling;
  p.context = const_cast<void*>(args.take(context, {p.N, p.Ev}));
  p.weights = const_cast<void*>(args.take(weights, {p.N, p.T}));
  p.scratch = const_cast<void*>(args.take(scratch, {p.N, p.T}));
  p.query = const_cast<void*>(args.take(query, {p.N, p.A}));
  p.q = p.query;
  p.peak = static_cast<int64_t*>(const_cast<void*>(args.take(peak, {p.N}, true)));
  for (const DeviceArray* out : {&context, &weights, &peak, &scratch, &query})
    for (const DeviceArray* a : args.all)
      if (a != out && out->may_overlap(*a))
        throw ValueError(std::string(kOp) + ": " + out->name() + " must not share memory with " + a->name());

  nb::gil_scoped_release release;
  cuda::additive_step(p, cuda::Launch{P.device(), stream});
}

}  // namespace

void register_additive_cuda(nb::module_& m) {
  m.def("additive_step_cuda", &additive_step_cuda, nb::arg("P"), nb::arg("values"), nb::arg("lengths"),
        nb::arg("rows"), nb::arg("dec_z"), nb::arg("w_dec"), nb::arg("att_in").none(), nb::arg("conv_w").none(),
        nb::arg("conv_proj").none(), nb::arg("loc_bias").none(), nb::arg("gvec_w").none(), nb::arg("scaling"),
        nb::arg("out_context"), nb::arg("out_weights"), nb::arg("out_peak"), nb::arg("scratch"), nb::arg("query"),
        nb::arg("stream"),
        "Private GPU kernel entry of the ESPnet attention steps; use attnkit.espnet's classes with CuPy arrays.");
}

}  // namespace attnkit::bindings
