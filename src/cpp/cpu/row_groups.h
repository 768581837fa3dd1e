// A step's rows grouped by the utterance they attend (beam search: several hypotheses per
// utterance), so that each utterance's encoder arrays are read once for all of its rows. A
// counting sort, stable: the rows n with rows[n] == b are order[start[b]], ..., order[start[b+1]-1]
// in increasing n. rows[n] must lie in [0, B) (the ops check it).
#pragma once
#include <cstdint>
#include <vector>

namespace attnkit::cpu::ATTNKIT_ISA {

struct RowGroups {
  std::vector<int64_t> order, start;

  RowGroups(const int64_t* rows, int64_t N, int64_t B) : order(N), start(B + 1, 0) {
    for (int64_t n = 0; n < N; ++n) ++start[rows[n] + 1];
    for (int64_t b = 0; b < B; ++b) start[b + 1] += start[b];
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t n = 0; n < N; ++n) order[fill[rows[n]]++] = n;
  }
};

}  // namespace attnkit::cpu::ATTNKIT_ISA
