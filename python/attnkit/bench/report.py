"""Rendering results: the Markdown table, the JSON-lines file, and comparing two runs."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import IO, Iterable


def fmt(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if pct:
        return f"{x:.1f}%" if x < 100 else f"{x:.0f}%"
    if abs(x) < 10:
        return f"{x:.2f}"
    if abs(x) < 1000:
        return f"{x:.1f}"
    return f"{x:,.0f}"


def _table(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                           for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return [line(head), sep] + [line(r) for r in rows]


def preamble(header: dict, peaks: list[dict]) -> list[str]:
    cfg = header["attnkit"]
    v = header["versions"]
    peers = ", ".join(f"{k} {v[k]}" for k in ("numpy", "torch", "onnxruntime") if k in v)
    out = [
        f"attnkit {cfg['version']} bench, {header['date']}",
        f"CPU: {header['cpu_model']} ({header['cpu_count']} logical CPUs, {header['cpu_affinity']} usable); "
        f"attnkit ISA {cfg['cpu_isa_active']} (supported: {', '.join(cfg['cpu_isa_supported'])}); "
        f"CUDA devices: {cfg['cuda_devices']}",
        f"Peers: {peers}; NumPy BLAS: {header['numpy_blas']}, threads set by {header['blas_threads']}",
    ]
    rounds = header.get("rounds", 1)
    if rounds > 1:
        out.append(f"Timing: {rounds} rounds per case, the backends taking turns in each; every figure "
                   f"pools its backend's samples of all rounds")
    busy = header.get("busy_cpus_at_start")
    if busy is not None and busy >= 0.25:
        out.append(f"**Warning**: other processes kept {busy:.2f} of {header['cpu_count']} CPUs busy when the "
                   f"run started; multi-threaded figures are unreliable (rerun on an idle machine).")
    for p in peaks:
        if p.get("type") == "gpu_peak":
            out.append(f"GPU peak ({p['device']}, {p['dtype']}): {p['gflops'] / 1e3:.1f} TFLOP/s median over "
                       f"{p['repeats']} cupy.matmul {p['n']}^3; device copy {p['copy_gbps']:.0f} GB/s")
            continue
        out.append(f"Peak ({p['threads']} thread{'s' if p['threads'] != 1 else ''}, {p['dtype']}): "
                   f"{p['gflops']:.1f} GFLOP/s median over {p['repeats']} np.matmul {p['n']}^3")
    return out


def _speedup_column(baseline: str | None) -> str:
    return f"x vs {baseline}" if baseline else "x vs -"


def _iqr(r: dict, scale: float = 1.0) -> str:
    return fmt((r["q3_us"] - r["q1_us"]) * scale) if r["samples"] >= 3 else f"n={r['samples']}"


def _kernel_table(ok: list[dict], baseline: str | None) -> list[str]:
    head = ["op", "case", "dtype", "thr", "backend", "median us", "IQR us", "GFLOP/s", "GB/s", "% peak",
            _speedup_column(baseline)]
    rows = [[r["op"], r["case"], r["dtype"], str(r["threads"]), r["backend"], fmt(r["median_us"]), _iqr(r),
             fmt(r["gflops"]), fmt(r["gbps"]), fmt(None if r["peak_frac"] is None else 100 * r["peak_frac"], pct=True),
             fmt(r["speedup"])] for r in ok]
    return _table(head, rows, right={3, 5, 6, 7, 8, 9, 10}) + [
        "",
        f"median and interquartile range per call over timed samples after warm-up; "
        f"GFLOP/s from useful FLOPs (padded and masked keys not counted); % peak is of the "
        f"same-dtype np.matmul peak at the same thread count; "
        f"x vs {baseline or '-'} = baseline median / this median (> 1 is faster)."]


def _decode_table(ok: list[dict], baseline: str | None) -> list[str]:
    head = ["decode", "dtype", "thr", "backend", "utts", "audio s", "median ms", "IQR ms", "RTF", "utt/s",
            _speedup_column(baseline)]
    rows = [[r["case"], r["dtype"], str(r["threads"]), r["backend"], str(r["utterances"]), fmt(r["audio_seconds"]),
             fmt(r["median_us"] * 1e-3), _iqr(r, 1e-3), f"{r['rtf']:.4f}", fmt(r["utt_per_s"]), fmt(r["speedup"])]
            for r in ok]
    return _table(head, rows, right={2, 4, 5, 6, 7, 8, 9, 10}) + [
        "",
        "decode: encoder and search over all bundled samples per call (features computed beforehand); "
        "RTF = median compute seconds / audio seconds (< 1 is faster than real time)."]


def markdown(header: dict, peaks: list[dict], records: Iterable[dict], baseline: str | None,
             notes: list[str] = (), interrupted: bool = False) -> str:
    records = list(records)
    ok = [r for r in records if r["status"] == "ok"]
    kernels = [r for r in ok if r["op"] != "decode"]
    decoding = [r for r in ok if r["op"] == "decode"]
    lines = [f"{x}  " for x in preamble(header, peaks)] + [""]
    if kernels or not decoding:
        lines += _kernel_table(kernels, baseline)
    if decoding:
        lines += ([""] if kernels else []) + _decode_table(decoding, baseline)
    # one line per backend and reason, naming every case it applies to
    skipped = defaultdict(list)
    for r in records:
        if r["status"] != "ok":
            where = f"{r['op']} {r['case']} {r['dtype']} ({r['threads']} thr)"
            skipped[r["backend"], r["status"], r["note"]].append(where)
    if notes or skipped:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
        lines.extend(f"- {backend} {status} on {', '.join(cases)}: {note}"
                     for (backend, status, note), cases in skipped.items())
    if interrupted:
        lines.append("")
        lines.append(f"**Interrupted**: {len(ok)} case(s) measured before Ctrl-C.")
    return "\n".join(lines) + "\n"


# ---- JSON lines ---------------------------------------------------------------------------------


class JsonLines:
    """Writes one JSON object per line and flushes each, so an interrupted run keeps its records."""

    def __init__(self, path: str | None):
        self.f: IO[str] | None = open(path, "w", encoding="utf-8") if path else None

    def write(self, record: dict) -> None:
        if self.f is not None:
            self.f.write(json.dumps(record, sort_keys=False) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def load(path: str) -> tuple[dict, list[dict], list[dict]]:
    """(header, peak records, case records) of a JSON-lines file written by `attnkit bench`."""
    header, peaks, cases = None, [], []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {i} must be JSON, got {line[:60]!r} ({e})") from None
            kind = r.get("type")
            if kind == "header":
                header = r
            elif kind in ("peak", "gpu_peak"):
                peaks.append(r)
            elif kind == "case":
                cases.append(r)
    if header is None:
        raise ValueError(f"{path} must hold a header record (written by attnkit bench --json)")
    return header, peaks, cases


def _key(r: dict) -> tuple:
    return (r["op"], r["case"], r["dtype"], r["threads"], r["backend"])


def compare(path_a: str, path_b: str) -> str:
    """A Markdown comparison of two runs: per matching case, both medians and the speed-up of B
    over A (A median / B median, > 1 means B is faster), and per backend the geometric mean."""
    ha, _, ca = load(path_a)
    hb, _, cb = load(path_b)
    a = {_key(r): r for r in ca if r["status"] == "ok"}
    b = {_key(r): r for r in cb if r["status"] == "ok"}
    common = [k for k in a if k in b]
    rows, per_backend = [], defaultdict(list)
    for k in common:
        s = a[k]["median_us"] / b[k]["median_us"]
        per_backend[k[4]].append(s)
        rows.append([k[0], k[1], k[2], str(k[3]), k[4], fmt(a[k]["median_us"]), fmt(b[k]["median_us"]), fmt(s)])
    lines = [
        f"A: {path_a}: attnkit {ha['attnkit']['version']}, {ha['date']}, {ha['cpu_model']}, threads {ha['threads']}  ",
        f"B: {path_b}: attnkit {hb['attnkit']['version']}, {hb['date']}, {hb['cpu_model']}, threads {hb['threads']}",
        "",
    ]
    lines += _table(["op", "case", "dtype", "thr", "backend", "A us", "B us", "speed-up B/A"], rows, right={3, 5, 6, 7})
    lines.append("")
    lines.append("speed-up B/A = A median / B median (> 1: B is faster).")
    for name, s in per_backend.items():
        lines.append(f"- {name}: geometric mean speed-up {math.exp(sum(map(math.log, s)) / len(s)):.3f} over {len(s)} case(s)")
    only_a, only_b = len(a) - len(common), len([k for k in b if k not in a])
    if only_a or only_b:
        lines.append(f"- not compared: {only_a} case(s) only in A, {only_b} only in B")
    return "\n".join(lines) + "\n"
