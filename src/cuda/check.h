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
