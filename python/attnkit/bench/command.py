"""`attnkit bench`, `attnkit bench compare` and `attnkit bench plot`: argument parsing on top of
the engine."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from attnkit.bench import plots
from attnkit.bench.backends import ALL_BACKENDS
from attnkit.bench.cases import OPS, full_cases, quick_cases
from attnkit.bench.report import compare, load
from attnkit.bench.runner import run

DTYPES = ("float32", "float64", "float16")  # float16: the GPU backends only

# (budget per case in seconds, warm-up seconds, peak repeats, rounds) for the full and the quick run
FULL = (1.0, 0.1, 5, 3)
QUICK = (0.25, 0.05, 3, 1)


def _list(kind, allowed=None):
    def parse(text: str):
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list, got {text!r}")
        if kind is int:
            try:
                items = [int(x) for x in items]
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be integers, got {text!r}") from None
            if any(x < 1 for x in items):
                raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
        if allowed is not None:
            bad = [x for x in items if x not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"must be among {', '.join(allowed)}, got {', '.join(bad)}")
        return items

    return parse


def _positive(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return x


def _positive_int(text: str) -> int:
    try:
        x = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if x < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return x


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `attnkit bench` (and `benchmarks/bench_sdpa.py` reuses some)."""
    p.add_argument("--quick", action="store_true", help="a small sweep that finishes in under a minute")
    p.add_argument("--ops", type=_list(str, OPS), default=list(OPS), metavar="LIST",
                   help=f"ops to run (default: {','.join(OPS)})")
    p.add_argument("--backends", type=_list(str, ALL_BACKENDS), default=list(ALL_BACKENDS), metavar="LIST",
                   help=f"backends (default: all; missing ones are skipped with a note): {','.join(ALL_BACKENDS)}")
    p.add_argument("--isa", type=_list(str), default=None, metavar="LIST",
                   help="run attnkit once per CPU instruction set, e.g. avx2,portable, or 'all' "
                        "(default: the active one)")
    p.add_argument("--dtype", type=_list(str, DTYPES), default=["float32"], metavar="LIST",
                   help="float32, float64, float16 (GPU backends only) (default: float32)")
    p.add_argument("--threads", type=_list(int), default=None, metavar="LIST",
                   help="thread counts, e.g. 1,2 (default: attnkit's current count); applied to attnkit, "
                        "NumPy's BLAS and torch")
    p.add_argument("--baseline", default=None, metavar="BACKEND",
                   help="the backend ratios are taken against (default: torch if present, else numpy)")
    p.add_argument("--case", action="append", default=None, metavar="TEXT",
                   help="only cases whose label contains TEXT (repeatable), e.g. --case tiny --case dec-step")
    p.add_argument("--json", metavar="PATH", help="write JSON lines: a header, then one record per case")
    p.add_argument("--markdown", metavar="PATH", help="also write the Markdown table to PATH")
    p.add_argument("--plot", metavar="DIR", help="also write PNG plots into DIR (needs matplotlib): throughput "
                                                 "against sequence length, GPU-over-CPU speed-ups")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="model directory of the decode workload (default: the bundled model)")
    p.add_argument("--list", action="store_true", help="print the selected cases and exit")
    p.add_argument("--max-seconds", type=_positive, default=None, metavar="S",
                   help=f"time budget per case and backend (default {FULL[0]}, --quick {QUICK[0]})")
    p.add_argument("--warmup-seconds", type=_positive, default=None, metavar="S",
                   help=f"warm-up per case and backend (default {FULL[1]}, --quick {QUICK[1]})")
    p.add_argument("--repeats", type=int, default=30, metavar="N", help="at most N timed samples (default 30)")
    p.add_argument("--rounds", type=_positive_int, default=None, metavar="N",
                   help=f"rounds per case, the backends taking turns in each, so that a load spike on a shared "
                        f"machine falls on all of them (default {FULL[3]}, --quick {QUICK[3]}); the budget and "
                        f"the samples are split between the rounds")
    p.add_argument("--peak-size", type=int, default=2048, metavar="N",
                   help="matrix size of the np.matmul peak measurement (default 2048)")
    p.add_argument("--rotate-mib", type=float, default=64, metavar="MIB",
                   help="cycle input copies spanning this many MiB, so timings are not pure cache "
                        "figures (default 64; 0 disables)")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress indicator on stderr")


def select_cases(args) -> list:
    base = quick_cases() if args.quick else full_cases()
    cases = [c for c in base if c.op in args.ops]
    if args.model is not None:
        cases = [dataclasses.replace(c, model=args.model) if c.op == "decode" else c for c in cases]
    if args.case:
        cases = [c for c in cases if any(t in c.label for t in args.case)]
    return [c.with_dtype(d) for c in cases for d in args.dtype]


def _count(x: int | None, scale: float, unit: str) -> str:
    return f"{'-':>12} {unit}" if x is None else f"{x / scale:12,.2f} {unit}"


def write_plots(records: list[dict], out_dir: str, title: str, command: str, fmt: str = "png") -> None:
    paths, notes = plots.write_plots(records, out_dir, title, fmt)
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    for note in notes:
        print(f"{command}: {note}", file=sys.stderr)


def run_compare(args) -> int:
    try:
        sys.stdout.write(compare(args.a, args.b))
    except (OSError, ValueError, KeyError) as e:
        print(f"attnkit bench compare: {e}", file=sys.stderr)
        return 2
    return 0


def run_plot(args) -> int:
    try:
        header, _, records = load(args.results)
        write_plots(records, args.out, f"{header['cpu_model']}, {header['date']}", "attnkit bench plot", args.format)
    except (ImportError, OSError, ValueError, KeyError) as e:
        print(f"attnkit bench plot: {e}", file=sys.stderr)
        return 2
    return 0


def run_bench(args) -> int:
    command = getattr(args, "bench_command", None)
    if command == "compare":
        return run_compare(args)
    if command == "plot":
        return run_plot(args)
    cases = select_cases(args)
    if args.list:
        for c in cases:
            print(f"{c.op:11} {c.label:45} {c.dtype}  {_count(c.flops(), 1e6, 'MFLOP')}  "
                  f"{_count(c.nbytes(), 2**20, 'MiB')}")
        return 0
    if not cases:
        print("attnkit bench: no case matches the selection (see --list)", file=sys.stderr)
        return 2
    budget, warmup, peak_repeats, rounds = QUICK if args.quick else FULL
    rounds = args.rounds or rounds
    for path in (args.json, args.markdown):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            print(f"attnkit bench: the folder of {path} must exist", file=sys.stderr)
            return 2
    if args.plot:
        try:  # fail before the sweep, not after it
            plots.require_matplotlib()
        except ImportError as e:
            print(f"attnkit bench --plot: {e}", file=sys.stderr)
            return 2
    try:
        result = run(
            cases,
            backends=args.backends,
            isas=args.isa,
            threads=args.threads,
            baseline=args.baseline,
            budget_s=args.max_seconds or budget,
            warmup_s=args.warmup_seconds or warmup,
            max_samples=args.repeats,
            rounds=rounds,
            peak_size=args.peak_size,
            peak_repeats=peak_repeats,
            rotate_mib=args.rotate_mib,
            json_path=args.json,
            markdown_path=args.markdown,
            progress=not args.no_progress,
            seed=args.seed,
            argv=getattr(args, "argv", None),
        )
    except KeyboardInterrupt:  # while loading the peers, before the first measurement
        print("attnkit bench: interrupted before anything was measured", file=sys.stderr)
        return 130
    if args.plot:
        try:
            write_plots(result.records, args.plot, f"{result.header['cpu_model']}, {result.header['date']}",
                        "attnkit bench --plot")
        except OSError as e:
            print(f"attnkit bench --plot: {e}", file=sys.stderr)
            return 2
    return 130 if result.interrupted else 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `bench` (with its `compare` sub-command) on the top-level CLI."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark attnkit against NumPy and PyTorch",
        description="Times op x backend x dtype x shape and prints a Markdown table: median and IQR "
                    "per call, GFLOP/s, GB/s, share of this machine's np.matmul peak, and the speed-up "
                    "over a baseline; decoding as a real-time factor. `attnkit bench compare A.json "
                    "B.json` compares two --json runs; `attnkit bench plot A.json --out DIR` plots one.",
    )
    add_arguments(p)
    sub = p.add_subparsers(dest="bench_command", metavar="{compare,plot}")
    c = sub.add_parser("compare", help="compare two JSON-lines files written by --json",
                       description="Per matching case, both medians and the speed-up of B over A.")
    c.add_argument("a", metavar="A.json")
    c.add_argument("b", metavar="B.json")
    pl = sub.add_parser("plot", help="plot a JSON-lines file written by --json (needs matplotlib)",
                        description="Writes the plots of --plot for a saved run: throughput against sequence "
                                    "length per backend, GPU-over-CPU speed-ups.")
    pl.add_argument("results", metavar="RESULTS.json")
    pl.add_argument("--out", required=True, metavar="DIR", help="folder for the plots (created if needed)")
    pl.add_argument("--format", choices=plots.FORMATS, default="png",
                    help="png (default) or svg (text: small enough to commit beside the results)")
    p.set_defaults(func=run_bench)
    return p
