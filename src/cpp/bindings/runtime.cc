// Runtime facts and settings: version, ISAs, threads, CUDA; and the error types.
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <vector>

#include "attnkit/cuda.h"
#include "attnkit/errors.h"
#include "attnkit/parallel.h"
#include "bindings/register.h"
#include "cpu/isa.h"

namespace nb = nanobind;

namespace attnkit::bindings {

void register_errors(nb::module_& m) {
  static nb::exception<UnsupportedError> unsupported(m, "UnsupportedError", PyExc_NotImplementedError);
  static nb::exception<CudaError> cuda_error(m, "CudaError", PyExc_RuntimeError);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
}

void register_runtime(nb::module_& m) {
  m.def("compiled_isas", [] {
    std::vector<std::string> out;
    for (cpu::Isa isa : cpu::compiled_isas()) out.push_back(cpu::isa_name(isa));
    return out;
  });
  m.def("supported_isas", [] {
    std::vector<std::string> out;
    for (cpu::Isa isa : cpu::compiled_isas())
      if (cpu::cpu_supports(isa)) out.push_back(cpu::isa_name(isa));
    return out;
  });
  m.def("best_isa", [] { return std::string(cpu::isa_name(cpu::best_isa())); });
  m.def("active_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); });
  m.def("set_active_isa", &cpu::set_active_isa, nb::arg("name"));
  m.attr("max_threads") = kMaxThreads;
  m.def("num_threads", &num_threads);
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw ValueError("set_num_threads: n must be >= 1, got " + std::to_string(n));
    if (n > kMaxThreads)
      throw ValueError("set_num_threads: n must be <= " + std::to_string(kMaxThreads) + ", got " + std::to_string(n));
    set_num_threads(n);
  }, nb::arg("n"));
  m.def("cuda_built", &cuda::built);
  m.def("cuda_runtime_version", &cuda::runtime_version);
  m.def("cuda_device_count", [] {
    std::string why;
    const int n = cuda::device_count(&why);
    return nb::make_tuple(n, why);
  });
}

}  // namespace attnkit::bindings
