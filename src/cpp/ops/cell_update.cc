#include "ops/cell_update.h"

#include "cpu/isa.h"

namespace attnkit {

void cell_update_cpu(const CellUpdateParams& p) {
  if (p.N == 0 || p.H == 0) return;
  ATTNKIT_CPU_DISPATCH(cell_update, p);
}

}  // namespace attnkit
