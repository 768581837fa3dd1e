"""`attnkit bench --plot DIR` and `attnkit bench plot RESULTS.json --out DIR [--format svg]`: plots
of a run, PNG by default, SVG (text, small enough to commit beside the results) on request.

- ``throughput-<op>-<dtype>-<N>thr.png``: GFLOP/s against sequence length (keys / encoder frames)
  on log-log axes, one panel per workload series (the case label without its length), one line
  per backend.
- ``gpu-speedup-<op>-<dtype>.png``: per case, each GPU backend's speed-up over its CPU
  counterpart (attnkit-cuda over attnkit, torch-cuda over torch, cupy over numpy); skipped with a
  note when no GPU backend ran.

matplotlib is imported only here, and only when a plot is asked for (`pip install matplotlib`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

# GPU backend -> the CPU backend its speed-up is taken over
GPU_COUNTERPART = {"attnkit-cuda": "attnkit", "torch-cuda": "torch", "cupy": "numpy"}


def require_matplotlib():
    """pyplot on the non-interactive Agg backend; ImportError saying what to install otherwise."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("attnkit bench plots need matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _seq_len(r: dict) -> int | None:
    # Files written before seq_len was recorded: the sdpa / mha key length.
    return r.get("seq_len", r.get("shape", {}).get("Tk"))


def _series(r: dict) -> str:
    return r.get("series") or r["name"]


FORMATS = ("png", "svg")


def _filename(*parts, fmt: str = "png") -> str:
    return "-".join(str(p).replace(" ", "_").replace("/", "_") for p in parts) + "." + fmt


def write_plots(records: list[dict], out_dir, title: str = "", fmt: str = "png") -> tuple[list[Path], list[str]]:
    """Writes the plots for the "case" records of a run into `out_dir` (created if needed), as
    `fmt` (png or svg). Returns (paths written, notes on what was not plotted)."""
    if fmt not in FORMATS:
        raise ValueError(f"plot format must be one of {FORMATS}, got {fmt!r}")
    plt = require_matplotlib()
    # SVG text as <text> elements, not glyph outlines: a third of the size, still searchable.
    plt.rcParams["svg.fonttype"] = "none"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ok = [r for r in records if r.get("type", "case") == "case" and r.get("status") == "ok"]
    paths: list[Path] = []
    notes: list[str] = []
    if not ok:
        return paths, ["no measured case records (attnkit bench --json writes them): nothing plotted"]

    plotted = [r for r in ok if r.get("gflops") and _seq_len(r)]
    if not plotted:
        notes.append("no measured case with a sequence length and a FLOP count: throughput plot skipped")
    groups = defaultdict(list)
    for r in plotted:
        groups[r["op"], r["dtype"], r["threads"]].append(r)
    for (op, dtype, threads), rs in groups.items():
        path = out / _filename("throughput", op, dtype, f"{threads}thr", fmt=fmt)
        _throughput_figure(plt, rs, f"{op}, {dtype}, {threads} thread(s)" + (f"\n{title}" if title else ""), path)
        paths.append(path)

    speedups = _gpu_speedups(ok)
    if not speedups:
        notes.append("no GPU backend ran: GPU-over-CPU speed-up plot skipped")
    for (op, dtype), bars in speedups.items():
        path = out / _filename("gpu-speedup", op, dtype, fmt=fmt)
        _speedup_figure(plt, bars, f"GPU over CPU, {op}, {dtype}" + (f"\n{title}" if title else ""), path)
        paths.append(path)
    return paths, notes


def _throughput_figure(plt, records: list[dict], title: str, path: Path) -> None:
    from matplotlib.ticker import LogFormatter

    by_series = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_series[_series(r)][r["backend"]].append((_seq_len(r), r["gflops"]))
    backends = sorted({r["backend"] for r in records})
    colours = {b: f"C{i % 10}" for i, b in enumerate(backends)}
    n = len(by_series)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows + 0.8), squeeze=False)
    for ax, (series, lines) in zip(axes.flat, sorted(by_series.items())):
        for backend, points in sorted(lines.items()):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", color=colours[backend], label=backend)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # 20, not 2 x 10^1: a panel often spans less than a decade
            axis.set_major_formatter(LogFormatter())
            axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        ax.set_title(series, fontsize=9)
        ax.set_xlabel("sequence length", fontsize=8)
        ax.set_ylabel("GFLOP/s", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=colours[b], marker="o", label=b) for b in backends]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _gpu_speedups(ok: list[dict]) -> dict:
    """{(op, dtype): {case label: {gpu backend: speed-up}}} over the fastest matching CPU record."""
    cpu = defaultdict(list)
    for r in ok:
        if r.get("device", "cpu") == "cpu":
            cpu[r["op"], r["case"], r["dtype"], r["threads"]].append(r)
    out = defaultdict(lambda: defaultdict(dict))
    threads = {r["threads"] for r in ok}
    for r in ok:
        counterpart = GPU_COUNTERPART.get(r["backend"])
        if r.get("device", "cpu") == "cpu" or counterpart is None:
            continue
        peers = [c for c in cpu[r["op"], r["case"], r["dtype"], r["threads"]]
                 if c["backend"] == counterpart or c["backend"].startswith(counterpart + "[")]
        if not peers:
            continue
        label = r["case"] + (f" {r['threads']}thr" if len(threads) > 1 else "")
        out[r["op"], r["dtype"]][label][r["backend"]] = min(c["median_us"] for c in peers) / r["median_us"]
    return out


def _speedup_figure(plt, bars: dict, title: str, path: Path) -> None:
    labels = list(bars)
    backends = sorted({b for v in bars.values() for b in v})
    width = 0.8 / len(backends)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(labels) * len(backends) + 2), 4.5))
    for i, backend in enumerate(backends):
        xs = [k + (i - (len(backends) - 1) / 2) * width for k in range(len(labels))]
        ys = [bars[label].get(backend, 0.0) for label in labels]
        ax.bar(xs, ys, width, label=f"{backend} / {GPU_COUNTERPART[backend]}", color=f"C{i % 10}")
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("speed-up (CPU median / GPU median)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
