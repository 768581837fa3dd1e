#!/usr/bin/env python
"""The issue-2 benchmark: attnkit's scaled dot-product attention beside NumPy and PyTorch.

A thin caller of the `attnkit bench` engine (python/attnkit/bench/) with a fixed case list, at 1
and 2 threads, on the CPU backends (attnkit, NumPy, and torch when installed):

- encoder self-attention B=8 H=4 T=512 D=64 and B=4 H=8 T=1024 D=64, each with and without
  key lengths (a padded batch with unsorted lengths between T/2 and T);
- a decoder step B=10 H=4 Tq=1 Tk=500 D=64;
- a tiny B=1 H=1 T=8 D=8 call for per-call overhead.

Prints the Markdown table and writes benchmarks/results/<date>-cpu-sdpa.json (JSON lines) and
.md. A full run takes a few minutes on 2 cores; `--max-seconds 0.02 --out-dir /tmp` checks that
it works in seconds.
"""
from __future__ import annotations

import sys

from attnkit.bench import sdpa_case

from suite import run_suite

CASES = [
    sdpa_case("enc", 8, 4, 512, 512, 64),
    sdpa_case("enc", 8, 4, 512, 512, 64, lengths=True),
    sdpa_case("enc", 4, 8, 1024, 1024, 64),
    sdpa_case("enc", 4, 8, 1024, 1024, 64, lengths=True),
    sdpa_case("dec-step", 10, 4, 1, 500, 64),
    sdpa_case("tiny", 1, 1, 8, 8, 8, rotate=False),
]


def main(argv=None) -> int:
    return run_suite("sdpa", CASES, description=__doc__.split("\n\n")[0], default_budget_s=1.0,
                     script="benchmarks/bench_sdpa.py", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
