// Host-side helpers of the CUDA part: every runtime call's status becomes a CudaError, and a
// call runs on the device its arrays live on, leaving the caller's current device as it was.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "attnkit/errors.h"

namespace attnkit::cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw CudaError(std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// A failed runtime call also leaves its error in the thread's last-error slot (cudart is linked
// statically: only attnkit's own calls reach it). Cleared before a launch, so that the
// cudaGetLastError after it reports that launch and not an error already raised as a CudaError.
inline void clear_stale_error() { (void)cudaGetLastError(); }

// Lets `kernel` take `bytes` of dynamic shared memory (launches above 48 KiB need the opt-in).
// The attribute is set to the current device's whole opt-in limit, the same value on every call:
// set to each call's own size, two host threads launching the kernel with different sizes could
// each undo the other's setting between its set and its launch (the bindings release the GIL).
template <typename Kernel> void allow_dynamic_shared(Kernel kernel, size_t bytes, const char* op) {
  if (bytes <= 48 * 1024) return;
  int device = 0, limit = 0;
  check(cudaGetDevice(&device), (std::string(op) + ": cudaGetDevice").c_str());
  check(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        (std::string(op) + ": cudaDeviceGetAttribute").c_str());
  if (bytes > size_t(limit))
    throw UnsupportedError(std::string(op) + ": needs " + std::to_string(bytes) + " bytes of shared memory per block, " +
                           "more than this GPU's " + std::to_string(limit));
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit),
        (std::string(op) + ": cudaFuncSetAttribute").c_str());
}

class DeviceGuard {
 public:
  DeviceGuard(int device, const char* op) : target_(device) {
    check(cudaGetDevice(&previous_), (std::string(op) + ": cudaGetDevice").c_str());
    if (previous_ != target_) check(cudaSetDevice(target_), (std::string(op) + ": cudaSetDevice").c_str());
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  ~DeviceGuard() {
    if (previous_ != target_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  int target_;
};

}  // namespace attnkit::cuda
