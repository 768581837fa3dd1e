"""The `attnkit` command (also `python -m attnkit`).

Sub-commands: `transcribe` and `evaluate` (speech recognition, attnkit/asr/commands.py), `info`
(what this build contains and what it runs with), `bench` (the benchmark sweep, and `bench
compare`) and `convert-espnet` (an ESPnet model into an attnkit model directory). Each
sub-command registers itself on the argparse sub-parsers with a `func(args) -> exit status`.
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


def run_convert_espnet(args) -> int:
    import numpy as np

    from attnkit.asr.espnet_import import convert_espnet

    try:
        model = convert_espnet(args.config, args.weights, args.out, dtype=np.dtype(args.dtype))
    except (OSError, TypeError, ValueError, NotImplementedError) as e:
        # Bad input files are the user's to fix: one line, not a traceback.
        sys.stderr.write(f"attnkit convert-espnet: error: {e}\n")
        return 2
    sys.stdout.write(f"wrote {args.out}: {model!r}, weights stored as {args.dtype}\n")
    return 0


def add_convert_espnet(sub) -> None:
    convert = sub.add_parser(
        "convert-espnet", help="convert an ESPnet RNN attention model into an attnkit model directory",
        description="Reads an ESPnet2 config.yaml + model.pth (or an espnet1 model.json + model.acc.best) "
                    "without PyTorch and writes config.yaml + model.safetensors into --out.")
    convert.add_argument("--config", required=True, help="ESPnet2 config.yaml, or espnet1 model.json")
    convert.add_argument("--weights", required=True, help="the torch.save file: model.pth, model.acc.best, snapshot")
    convert.add_argument("--out", required=True, help="output directory (created if needed)")
    convert.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                         help="how the weights are stored (float16 halves the file; loading upcasts)")
    convert.set_defaults(func=run_convert_espnet)


def build_parser() -> argparse.ArgumentParser:
    from attnkit.asr.commands import add_parsers as add_asr
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

    add_asr(sub)
    add_bench(sub)
    add_convert_espnet(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `attnkit` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in benchmark results
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
