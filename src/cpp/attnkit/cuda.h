// The CUDA part of the build: what it can say about itself (a build without CUDA answers too),
// and the GPU entry points (a build without CUDA raises UnsupportedError from them).
#pragma once
#include <cstdint>
#include <string>

#include "attnkit/params.h"

namespace attnkit::cuda {

bool built();                  // was the CUDA part compiled in?
std::string runtime_version(); // "13.0", or "" when not built
// Number of visible devices; 0 with no driver or no GPU (reason in *why), never an exception.
int device_count(std::string* why);

// Where a GPU call runs: the device its arrays live on and the caller's stream (a cudaStream_t
// as an integer; 0 is the legacy default stream). Nothing is allocated and nothing waits on the
// host, so a call can be captured into a CUDA graph.
struct Launch {
  int device = 0;
  std::uintptr_t stream = 0;
};

// Scaled dot-product attention with device pointers (dtype f32, f16 or bf16; key_lengths, when
// given, an int64 device array whose values are clamped to [0, Tk]). Rechecks what the kernel
// relies on; UnsupportedError for sizes it does not take, CudaError when the launch fails.
void scaled_dot_product_attention(const SdpaParams& p, const Launch& at);

// The fused step of ESPnet's additive attention family with device pointers (dtype f32 or f64;
// every array C-contiguous; p.scratch a [N][T] array of the step's dtype). Lengths and rows are
// clamped to their ranges on the device (the callers check them on the host).
void additive_step(const AdditiveStepParams& p, const Launch& at);

// The CTC prefix-score recursion with device pointers (dtype f32 or f64, every array
// C-contiguous); the CPU kernel's semantics.
void ctc_prefix_scores(const CtcPrefixParams& p, const Launch& at);

}  // namespace attnkit::cuda
