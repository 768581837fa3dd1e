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
