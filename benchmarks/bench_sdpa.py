#!/usr/bin/env python
"""The issue-2 and issue-9 benchmark: attnkit's scaled dot-product attention beside NumPy and PyTorch.

A thin caller of the `attnkit bench` engine (python/attnkit/bench/) with a fixed case list, at 1
and 2 threads, on the CPU backends (attnkit, NumPy, and torch and ONNX Runtime when installed):

- encoder self-attention B=8 H=4 T=512 D=64, B=4 H=8 T=1024 D=64 and B=1 H=4 T=2048 D=64, each
  with and without key lengths (a padded batch with unsorted lengths between T/2 and T), and
  causal (B=8 H=4 T=512);
- multi-head attention with projections, d_model 256, 4 heads, B=8 T=512 (beside
  torch.nn.MultiheadAttention in inference mode);
- decoder cross-attention: a step B=10 H=4 Tq=1 Tk=500 D=64; a beam of 10 hypotheses of one
  utterance as 10 query rows (B=1 H=4 Tq=10 Tk=1000); a single query row (B=1 H=4 Tq=1
  Tk=1000); 32 utterances with key lengths (B=32 H=4 Tq=1 Tk=1000); the beam and the single row
  again on one hot copy of their inputs (`-hot`: a search re-reads the same encoder memory at
  every step, so it is in cache, where the other cases rotate copies through 64 MiB);
- a tiny B=1 H=1 T=8 D=8 call for per-call overhead.

Prints the Markdown table and writes benchmarks/results/<date>-cpu-sdpa.json (JSON lines) and
.md. A full run takes several minutes on 2 cores; `--max-seconds 0.02 --out-dir /tmp` checks that
it works in seconds.
"""
from __future__ import annotations

import sys

from attnkit.bench import mha_case, sdpa_case
from attnkit.bench.cases import TINY

from suite import run_suite

CASES = [
    sdpa_case("enc", 8, 4, 512, 512, 64),
    sdpa_case("enc", 8, 4, 512, 512, 64, lengths=True),
    sdpa_case("enc", 4, 8, 1024, 1024, 64),
    sdpa_case("enc", 4, 8, 1024, 1024, 64, lengths=True),
    sdpa_case("enc", 1, 4, 2048, 2048, 64),
    sdpa_case("enc", 8, 4, 512, 512, 64, causal=True),
    mha_case("mha", 8, 512, 512, 256, 4),
    sdpa_case("dec-step", 10, 4, 1, 500, 64),
    sdpa_case("dec-beam", 1, 4, 10, 1000, 64),
    sdpa_case("dec-step", 1, 4, 1, 1000, 64),
    sdpa_case("dec-step", 32, 4, 1, 1000, 64, lengths=True),
    sdpa_case("dec-beam-hot", 1, 4, 10, 1000, 64, rotate=False),
    sdpa_case("dec-step-hot", 1, 4, 1, 1000, 64, rotate=False),
    TINY,
]


def main(argv=None) -> int:
    return run_suite("sdpa", CASES, description=__doc__.split("\n\n")[0], default_budget_s=1.0,
                     script="benchmarks/bench_sdpa.py", argv=argv,
                     backends=("attnkit", "numpy", "torch", "onnxruntime"))


if __name__ == "__main__":
    sys.exit(main())
