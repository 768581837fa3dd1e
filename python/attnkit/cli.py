"""The `attnkit` command (also `python -m attnkit`).

Sub-commands: `info` (what this build contains and what it runs with) and `bench` (the
benchmark sweep, and `bench compare`). Each sub-command registers itself on the argparse
sub-parsers with a `func(args) -> exit status`, so later ones (transcribe, evaluate,
convert-espnet) slot in beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _yes(flag) -> str:
    return "yes" if flag else "no"


def format_config(cfg: dict) -> str:
    """show_config() as aligned 'key: value' lines; keys this function does not know are listed too."""
    env = lambda name: f" (from {name}={os.environ[name]})" if name in os.environ else ""
    cuda = _yes(cfg.get("cuda_built"))
    if cfg.get("cuda_built") and cfg.get("cuda_runtime"):
        cuda += f" (runtime {cfg['cuda_runtime']})"
    devices = str(cfg.get("cuda_devices"))
    if cfg.get("cuda_note"):
        devices += f" ({cfg['cuda_note']})"
    rows = [
        ("version", cfg.get("version")),
        ("python", f"{cfg.get('python')} on {cfg.get('machine')}"),
        ("CPU ISAs compiled", ", ".join(cfg.get("cpu_isa_compiled", []))),
        ("CPU ISAs supported", ", ".join(cfg.get("cpu_isa_supported", []))),
        ("CPU ISA active", f"{cfg.get('cpu_isa_active')}{env('ATTNKIT_CPU_ISA')}"),
        ("CPU threads", f"{cfg.get('num_threads')}{env('ATTNKIT_NUM_THREADS')}"),
        ("CUDA built", cuda),
        ("CUDA devices", devices),
    ]
    known = {"version", "python", "machine", "cpu_isa_compiled", "cpu_isa_supported", "cpu_isa_active",
             "num_threads", "cuda_built", "cuda_runtime", "cuda_devices", "cuda_note"}
    rows += [(k, v) for k, v in cfg.items() if k not in known]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':{width + 1}} {v}" for k, v in rows) + "\n"


def run_info(args) -> int:
    import attnkit

    cfg = attnkit.show_config()
    if args.json:
        sys.stdout.write(json.dumps(cfg, indent=2) + "\n")
    else:
        sys.stdout.write("attnkit\n" + "".join(f"  {line}\n" for line in format_config(cfg).splitlines()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from attnkit.bench.command import add_parser as add_bench

    parser = argparse.ArgumentParser(
        prog="attnkit",
        description="Fast, faithful attention kernels for speech recognition.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="show the build: version, CPU instruction sets, threads, CUDA",
                          description="Prints attnkit.show_config().")
    info.add_argument("--json", action="store_true", help="print the configuration as JSON")
    info.set_defaults(func=run_info)

    add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `attnkit` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in benchmark results
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
