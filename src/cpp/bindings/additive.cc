// Binding of the fused additive attention step used by attnkit.espnet (see AdditiveStepParams).
// Every array must be C-contiguous (the Python caller makes them so once per prepared utterance),
// except dot-product keys, which may also be the [B, T, A] view of a [B, A, T] array.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "bindings/host_array.h"
#include "bindings/register.h"
#include "ops/additive.h"

namespace attnkit::bindings {

namespace {

constexpr const char* kOp = "additive attention step";

struct Checked {
  std::vector<std::unique_ptr<HostArray>> held;
  Kind kind = Kind::other;

  // Returns the data of a C-contiguous array of the given shape (-1 = any) and kind.
  const void* get(nb::handle obj, const char* name, std::vector<int64_t> shape, Kind want, bool writable = false) {
    held.push_back(std::make_unique<HostArray>(obj, kOp, name));
    const HostArray& a = *held.back();
    bool ok = a.ndim() == int(shape.size());
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || a.shape(int(i)) == shape[i];
    if (!ok) {
      std::string want_s = "(";
      for (size_t i = 0; i < shape.size(); ++i) want_s += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
      throw ValueError(std::string(kOp) + ": " + name + " must have shape " + want_s + (shape.size() == 1 ? ",)" : ")") +
                       ", got " + a.shape_str());
    }
    if (a.kind() != want)
      throw TypeError(std::string(kOp) + ": " + name + " has dtype " + a.dtype_name() + ", expected the step's dtype");
    int64_t expect = 1;
    for (int i = a.ndim() - 1; i >= 0; --i) {
      if (a.shape(i) != 1 && a.stride(i) != expect)
        throw ValueError(std::string(kOp) + ": " + name + " must be C-contiguous");
      expect *= a.shape(i);
    }
    if (!a.aligned())  // the kernel reads elements through typed pointers
      throw ValueError(std::string(kOp) + ": " + name + " must be aligned to its item size");
    if (writable && a.readonly()) throw ValueError(std::string(kOp) + ": " + name + " must be writeable");
    return a.data();
  }
  int64_t dim(int i, int axis) const { return held[i]->shape(axis); }
};

void additive_step(nb::handle P, nb::handle values, nb::handle lengths, nb::handle rows, nb::handle q,
                   nb::handle att_in, nb::handle conv_w, nb::handle proj, nb::handle loc_bias, nb::handle gvec,
                   double scaling, nb::handle context, nb::handle weights) {
  Checked c;
  AdditiveStepParams p;
  HostArray probe(P, kOp, "P");
  if (probe.kind() != Kind::f32 && probe.kind() != Kind::f64)
    throw TypeError(std::string(kOp) + ": P must be float32 or float64, got " + probe.dtype_name());
  const Kind k = probe.kind();
  p.dtype = k == Kind::f32 ? DType::f32 : DType::f64;
  const bool frames_inner = gvec.is_none() && probe.ndim() == 3 && probe.shape(0) >= 1 && probe.shape(1) > 1 &&
                            probe.stride(1) == 1 && probe.stride(2) == probe.shape(1);
  if (frames_inner) {
    // Dot-product keys stored [B, A, T] and passed as their [B, T, A] view (AttDot's cache):
    // the kernel's energies then run over frames in vectors. Any utterance stride (one head of
    // a head-major multi-head cache); the buffer protocol reports a meaningless one for B = 1.
    const int64_t block = probe.shape(1) * probe.shape(2);
    const int64_t batch_stride = probe.shape(0) == 1 ? block : probe.stride(0);
    if (!probe.aligned() || batch_stride < block)
      throw ValueError(std::string(kOp) + ": P must be aligned, with utterances that do not overlap");
    c.held.push_back(std::make_unique<HostArray>(P, kOp, "P"));
    p.P = c.held.back()->data();
    p.P_frames_inner = true;
    p.P_batch_stride = batch_stride;
  } else {
    p.P = c.get(P, "P", {-1, -1, -1}, k);
  }
  p.B = c.dim(0, 0), p.T = c.dim(0, 1), p.A = c.dim(0, 2);
  p.values = c.get(values, "values", {p.B, p.T, -1}, k);
  p.Ev = c.dim(1, 2);
  p.lengths = static_cast<const int64_t*>(c.get(lengths, "lengths", {p.B}, Kind::i64));
  p.rows = static_cast<const int64_t*>(c.get(rows, "rows", {-1}, Kind::i64));
  p.N = c.dim(3, 0);
  p.q = c.get(q, "q", {p.N, p.A}, k);
  if (!att_in.is_none()) {
    p.att_in = c.get(att_in, "att_in", {p.N, -1, p.T}, k);
    p.R = c.held.back()->shape(1);
    p.conv_w = c.get(conv_w, "conv_w", {-1, p.R, -1}, k);
    p.C = c.held.back()->shape(0), p.K = c.held.back()->shape(2);
    p.proj = c.get(proj, "conv_proj", {p.A, p.C}, k);
    if (!loc_bias.is_none()) p.loc_bias = c.get(loc_bias, "loc_bias", {p.A}, k);
  }
  if (!gvec.is_none()) p.gvec = c.get(gvec, "gvec_w", {p.A}, k);
  if (!(std::isfinite(scaling) && scaling > 0))
    throw ValueError(std::string(kOp) + ": scaling must be a finite number > 0, got " + std::to_string(scaling));
  p.scaling = scaling;
  p.context = const_cast<void*>(c.get(context, "out_context", {p.N, p.Ev}, k, true));
  p.weights = const_cast<void*>(c.get(weights, "out_weights", {p.N, p.T}, k, true));
  // Ev = 0 is allowed: the Forward family wants only the weights.
  if (p.B < 1 || p.T < 1 || p.A < 1)
    throw ValueError(std::string(kOp) + ": P must not have an empty axis, got " + probe.shape_str());
  nb::gil_scoped_release release;
  additive_step_cpu(p);
}

}  // namespace

void register_additive(nb::module_& m) {
  m.def("additive_step", &additive_step, nb::arg("P"), nb::arg("values"), nb::arg("lengths"), nb::arg("rows"),
        nb::arg("q"), nb::arg("att_in").none(), nb::arg("conv_w").none(), nb::arg("conv_proj").none(),
        nb::arg("loc_bias").none(), nb::arg("gvec_w").none(), nb::arg("scaling"), nb::arg("out_context"),
        nb::arg("out_weights"),
        "Private kernel entry of the ESPnet attention steps: additive family, or dot-product energies "
        "(AttDot) when gvec_w is None.");
}

}  // namespace attnkit::bindings
