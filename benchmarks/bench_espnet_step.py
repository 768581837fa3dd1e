#!/usr/bin/env python
"""The issue-3 benchmark: one decoder step of ESPnet's RNN attentions, attnkit beside NumPy and a
PyTorch eager implementation of the same math (as ESPnet writes it: projections cached per
utterance, the encoder repeated per hypothesis as in ESPnet's batch beam search).

A thin caller of the `attnkit bench` engine (`attnkit bench --ops espnet-step` runs the same
cases; the peers live in python/attnkit/bench/espnet_step.py): AttLoc, AttAdd, AttDot and
AttMultiHeadLoc at ESPnet's recipe sizes (E = A = Dz = 320, C = 10, F = 100, 4 heads), N in
{1, 10, 40} rows (1 utterance x 1, 1 x 10, 4 x 10 hypotheses), T in {200, 1000}, at 1 and 2
threads. Prints a Markdown table and writes benchmarks/results/<date>-cpu-espnet-step.json (JSON
lines) and .md. `--max-seconds 0.02 --out-dir /tmp` checks that it works in well under a minute.
"""
from __future__ import annotations

import sys

from attnkit.bench import espnet_step_cases

from suite import run_suite


def main(argv=None) -> int:
    return run_suite("espnet-step", espnet_step_cases(), description=__doc__.split("\n\n")[0], default_budget_s=0.5,
                     script="benchmarks/bench_espnet_step.py", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
