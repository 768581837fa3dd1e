// What the CUDA part of the build can say about itself; a build without CUDA answers too.
#pragma once
#include <string>

namespace attnkit::cuda {

bool built();                  // was the CUDA part compiled in?
std::string runtime_version(); // "13.0", or "" when not built
// Number of visible devices; 0 with no driver or no GPU (reason in *why), never an exception.
int device_count(std::string* why);

}  // namespace attnkit::cuda
