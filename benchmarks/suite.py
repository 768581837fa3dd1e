"""What the fixed-case benchmark scripts share: their command line and one run of the
`attnkit bench` engine on the CPU backends, written to benchmarks/results/<date>-cpu-<name>."""
from __future__ import annotations

import argparse
import datetime
import os
import sys

from attnkit.bench import run

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def run_suite(name: str, cases, *, description: str, default_budget_s: float, script: str, argv=None,
              backends=("attnkit", "numpy", "torch")) -> int:
    """Parses --threads, --max-seconds, --out-dir, --baseline, --rounds, --no-progress; runs ``cases`` on
    ``backends`` (missing peers are skipped with a note); returns the exit status (130 after
    Ctrl-C)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--max-seconds", type=float, default=default_budget_s,
                   help=f"time budget per case and backend (default {default_budget_s:g})")
    p.add_argument("--out-dir", default=RESULTS, help=f"where the .json and .md go (default {RESULTS})")
    p.add_argument("--baseline", default="torch", help="ratios against this backend (default torch, else numpy)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds per case, the backends taking turns in each (default 3)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"{datetime.date.today().isoformat()}-cpu-{name}")
    result = run(
        cases,
        backends=list(backends),
        threads=[int(t) for t in args.threads.split(",")],
        baseline=args.baseline,
        budget_s=args.max_seconds,
        rounds=args.rounds,
        warmup_s=min(0.1, args.max_seconds),
        json_path=stem + ".json",
        markdown_path=stem + ".md",
        progress=not args.no_progress,
        argv=[script, *(sys.argv[1:] if argv is None else argv)],
    )
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 130 if result.interrupted else 0
