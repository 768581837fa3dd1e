// Device discovery. cudart is linked statically and loads the driver lazily, so a CUDA build
// imports and answers "0 devices" on a machine with no GPU and no driver.
#include <cuda_runtime.h>

#include <string>

#include "attnkit/cuda.h"

namespace attnkit::cuda {

bool built() { return true; }

std::string runtime_version() {
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
}

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (why) *why = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return n;
}

}  // namespace attnkit::cuda
