// Typed errors thrown by the C++ front doors; the bindings turn each into the Python exception
// of the same name (ValueError, TypeError, attnkit.UnsupportedError). Kernels never throw.
#pragma once
#include <stdexcept>
#include <string>

namespace attnkit {

struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// A valid request that this build or this machine cannot serve (an ISA the CPU lacks, ...).
struct UnsupportedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A CUDA runtime call or kernel launch failed (attnkit.CudaError, a RuntimeError).
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace attnkit
