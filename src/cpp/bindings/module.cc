// attnkit._core: the private extension module. A table of contents: one register_<area> per file.
#include "bindings/register.h"

NB_MODULE(_core, m) {
  using namespace attnkit::bindings;
  register_errors(m);
  register_runtime(m);
  register_dot_product(m);
  register_dot_product_cuda(m);
  register_additive(m);
  register_additive_cuda(m);
  register_linear(m);
  register_location_conv(m);
  register_weighted_sum(m);
  register_log_softmax(m);
  register_recurrent(m);
  register_cell_update(m);
  register_ctc_prefix(m);
  register_ctc_prefix_cuda(m);
}
