#pragma once
#include <nanobind/nanobind.h>

namespace attnkit::bindings {
void register_errors(nanobind::module_& m);
void register_runtime(nanobind::module_& m);
void register_dot_product(nanobind::module_& m);
void register_dot_product_cuda(nanobind::module_& m);
void register_additive(nanobind::module_& m);
void register_additive_cuda(nanobind::module_& m);
void register_linear(nanobind::module_& m);
void register_location_conv(nanobind::module_& m);
void register_weighted_sum(nanobind::module_& m);
void register_log_softmax(nanobind::module_& m);
void register_recurrent(nanobind::module_& m);
void register_cell_update(nanobind::module_& m);
void register_ctc_prefix(nanobind::module_& m);
void register_ctc_prefix_cuda(nanobind::module_& m);
}  // namespace attnkit::bindings
