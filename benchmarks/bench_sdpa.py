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

import argparse
import datetime
import os
import sys

from attnkit.bench import run, sdpa_case

CASES = [
    sdpa_case("enc", 8, 4, 512, 512, 64),
    sdpa_case("enc", 8, 4, 512, 512, 64, lengths=True),
    sdpa_case("enc", 4, 8, 1024, 1024, 64),
    sdpa_case("enc", 4, 8, 1024, 1024, 64, lengths=True),
    sdpa_case("dec-step", 10, 4, 1, 500, 64),
    sdpa_case("tiny", 1, 1, 8, 8, 8, rotate=False),
]

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--max-seconds", type=float, default=1.0, help="time budget per case and backend (default 1)")
    p.add_argument("--out-dir", default=RESULTS, help=f"where the .json and .md go (default {RESULTS})")
    p.add_argument("--baseline", default="torch", help="ratios against this backend (default torch, else numpy)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"{datetime.date.today().isoformat()}-cpu-sdpa")
    result = run(
        CASES,
        backends=["attnkit", "numpy", "torch"],
        threads=[int(t) for t in args.threads.split(",")],
        baseline=args.baseline,
        budget_s=args.max_seconds,
        warmup_s=min(0.1, args.max_seconds),
        json_path=stem + ".json",
        markdown_path=stem + ".md",
        progress=not args.no_progress,
        argv=["benchmarks/bench_sdpa.py", *(sys.argv[1:] if argv is None else argv)],
    )
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
