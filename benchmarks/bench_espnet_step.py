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

import argparse
import datetime
import os
import sys

from attnkit.bench import espnet_step_cases, run

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--max-seconds", type=float, default=0.5, help="time budget per case and backend (default 0.5)")
    p.add_argument("--out-dir", default=RESULTS, help=f"where the .json and .md go (default {RESULTS})")
    p.add_argument("--baseline", default="torch", help="ratios against this backend (default torch, else numpy)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"{datetime.date.today().isoformat()}-cpu-espnet-step")
    result = run(
        espnet_step_cases(),
        backends=["attnkit", "numpy", "torch"],
        threads=[int(t) for t in args.threads.split(",")],
        baseline=args.baseline,
        budget_s=args.max_seconds,
        warmup_s=min(0.1, args.max_seconds),
        json_path=stem + ".json",
        markdown_path=stem + ".md",
        progress=not args.no_progress,
        argv=["benchmarks/bench_espnet_step.py", *(sys.argv[1:] if argv is None else argv)],
    )
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
