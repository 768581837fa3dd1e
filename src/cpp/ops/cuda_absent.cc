// Stands in for src/cuda/ when the build has no CUDA part (ATTNKIT_CUDA=OFF or no nvcc).
#include "attnkit/cuda.h"
#include "attnkit/errors.h"

namespace attnkit::cuda {

bool built() { return false; }
std::string runtime_version() { return ""; }
int device_count(std::string* why) {
  if (why) *why = "attnkit was built without CUDA";
  return 0;
}
void scaled_dot_product_attention(const SdpaParams&, const Launch&) {
  throw UnsupportedError("scaled_dot_product_attention: attnkit was built without CUDA, so it cannot run on GPU arrays");
}
void additive_step(const AdditiveStepParams&, const Launch&) {
  throw UnsupportedError("additive attention step: attnkit was built without CUDA, so it cannot run on GPU arrays");
}
void ctc_prefix_scores(const CtcPrefixParams&, const Launch&) {
  throw UnsupportedError("ctc_prefix_scores: attnkit was built without CUDA, so it cannot run on GPU arrays");
}

}  // namespace attnkit::cuda
