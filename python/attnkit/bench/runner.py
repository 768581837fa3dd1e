"""The run loop: threads x cases x backends, with the peak, progress, JSON lines and Ctrl-C."""
from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Sequence

import numpy as np

import attnkit
from attnkit.bench import machine
from attnkit.bench.backends import ALL_BACKENDS, Backend, make_backends
from attnkit.bench.cases import Workload
from attnkit.bench.report import JsonLines, markdown
from attnkit.bench.timing import measure, pooled

MAX_COPIES = 16


@dataclass
class RunResult:
    header: dict
    peaks: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline: str | None = None
    interrupted: bool = False

    def markdown(self) -> str:
        return markdown(self.header, self.peaks, self.records, self.baseline, self.notes, self.interrupted)


class Progress:
    """A progress bar on stderr, only when stderr is a terminal (logs and pipes stay clean):
    tqdm when installed, else a counter on one rewritten line."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.i = total, 0
        self.enabled = enabled and sys.stderr.isatty()
        self.bar, self.width = None, 0
        if self.enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="case", leave=False, dynamic_ncols=True)
            except ImportError:
                pass

    def start(self, desc: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(desc, refresh=True)
        else:
            text = f"[{self.i + 1}/{self.total}] {desc}"
            sys.stderr.write("\r" + text.ljust(self.width))
            sys.stderr.flush()
            self.width = len(text)

    def done(self) -> None:
        self.i += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


def copies_for(case: Workload, rotate_bytes: int) -> int:
    """How many input copies to cycle: enough to span `rotate_bytes` (bigger than the last-level
    cache), at most MAX_COPIES; one for cases that measure hot-cache overhead."""
    if not case.rotate or rotate_bytes <= 0:
        return 1
    return max(1, min(MAX_COPIES, math.ceil(rotate_bytes / max(1, case.input_bytes()))))


def choose_baseline(requested: str | None, usable: list[Backend], notes: list[str]) -> str | None:
    names = [b.name for b in usable]
    if requested is not None:
        if requested in names:
            return requested
        notes.append(f"baseline {requested!r} is not among the backends that ran ({', '.join(names)})")
    for name in ("torch", "numpy"):
        if name in names:
            return name
    return names[0] if names else None


def run(
    cases: Sequence[Workload],
    *,
    backends: Sequence[str] | None = None,
    isas: Sequence[str] | None = None,
    threads: Sequence[int] | None = None,
    baseline: str | None = None,
    budget_s: float = 1.0,
    warmup_s: float = 0.1,
    max_samples: int = 30,
    rounds: int = 1,
    peak_size: int = 2048,
    peak_repeats: int = 5,
    rotate_mib: float = 64,
    json_path: str | None = None,
    markdown_path: str | None = None,
    progress: bool = True,
    out: IO[str] | None = None,
    seed: int = 0,
    argv: list[str] | None = None,
) -> RunResult:
    """Times every case on every available backend at each thread count and returns the records.

    The Markdown table goes to `out` (default: sys.stdout) and `markdown_path`; JSON lines go to
    `json_path` as they are measured: a header, one "peak" record per thread count and dtype,
    one "case" record per case x backend x thread count, and a "footer". A case that cannot run
    here (`case.unavailable()`, e.g. no model file) or that a backend does not run gets a
    "skipped" record with the reason. With `rounds` > 1 the backends take turns on each case,
    round by round, and each record pools its rounds' samples (see `_measure_case`). Ctrl-C
    stops the run, and what was measured so far is still reported (`RunResult.interrupted`)."""
    if rounds < 1:
        raise ValueError(f"run: rounds must be >= 1, got {rounds}")
    notes: list[str] = []
    usable: list[Backend] = []
    described: dict[str, str] = {}
    for b in make_backends(list(backends or ALL_BACKENDS), list(isas) if isas else None):
        ok, note = b.available()
        if ok:
            usable.append(b)
            described[b.name] = note
        else:
            notes.append(f"{b.name}: skipped, {note}")
    base = choose_baseline(baseline, usable, notes)
    usable.sort(key=lambda b: b.name != base)  # baseline first in each round
    threads = list(threads or [attnkit.get_num_threads()])
    dtypes = sorted({c.dtype for c in cases}, key=lambda d: (d != "float32", d))

    blas = machine.BlasThreads()
    result = RunResult(machine.header(threads, blas, argv), notes=notes, baseline=base)
    result.header["backends"] = described
    result.header["baseline"] = base
    result.header["rounds"] = rounds
    writer = JsonLines(json_path)
    writer.write(result.header)
    prog = Progress(len(threads) * len(cases) * len(usable), progress)
    torch = sys.modules.get("torch")
    saved = (attnkit.get_num_threads(), torch.get_num_threads() if torch else None)
    t_start = time.perf_counter()
    gpu_peak: dict[str, float] = {}
    try:
        if any(b.device == "cuda" for b in usable):
            for dt in dtypes:
                prog.start(f"peak: cupy.matmul and a device copy, {dt}")
                p = {"type": "gpu_peak", **machine.measure_gpu_peak(dt)}
                gpu_peak[dt] = p["gflops"]
                result.peaks.append(p)
                writer.write(p)
        for t in threads:
            machine.set_all_threads(t, blas)
            for b in usable:
                b.set_threads(t)
            peak = {}
            for dt in dtypes:
                if dt == "float16":  # the CPU backends do not run float16 (NumPy has no float16 BLAS)
                    peak[dt] = None
                    continue
                prog.start(f"peak: np.matmul {peak_size}^3 {dt}, {t} thread(s)")
                p = machine.measure_peak(dt, peak_size, peak_repeats, seed)
                p = {"type": "peak", "threads": t, **p}
                peak[dt] = p["gflops"]
                result.peaks.append(p)
                writer.write(p)
            for case in cases:
                unavailable = case.unavailable()
                # (copies, params), made when the first backend needs them, then shared
                inputs = functools.cache(lambda case=case: _make_inputs(case, rotate_mib, seed))
                entries = []
                for b in usable:
                    rec = _record(b, case, t, gpu_peak.get(case.dtype) if b.device == "cuda" else peak[case.dtype],
                                  base, rounds)
                    reason = b.supports(case) or unavailable
                    if reason is not None:
                        rec.update(status="skipped", note=reason)
                    entries.append((b, rec))
                try:
                    _measure_case(entries, case, inputs, rounds, prog, t, budget_s=budget_s, warmup_s=warmup_s,
                                  max_samples=max_samples)
                finally:  # also after Ctrl-C: the backends measured in a first round are kept
                    base_us = next((r["median_us"] for b, r in entries if b.name == base and r["samples"]), None)
                    for b, rec in entries:
                        if rec["status"] == "ok" and not rec["samples"]:
                            continue  # interrupted before its first sample
                        if rec["status"] == "ok" and base_us is not None:
                            rec["speedup"] = base_us / rec["median_us"]
                        result.records.append(rec)
                        writer.write(rec)
                del inputs
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        prog.close()
        attnkit.set_num_threads(saved[0])
        blas.restore()
        if saved[1] is not None:
            torch.set_num_threads(saved[1])
        writer.write({"type": "footer", "interrupted": result.interrupted, "notes": notes,
                      "busy_cpus_at_end": machine.busy_cpus(),
                      "elapsed_s": round(time.perf_counter() - t_start, 3)})
        writer.close()
    text = result.markdown()
    out = sys.stdout if out is None else out
    out.write(text)
    out.flush()
    if markdown_path:
        with open(markdown_path, "w", encoding="utf-8") as f:
            f.write(text)
    return result


IDLE_GAP_S = 0.25


def _make_inputs(case: Workload, rotate_mib: float, seed: int) -> tuple[list[dict], dict | None]:
    rng = np.random.default_rng(seed)
    ncopies = copies_for(case, int(rotate_mib * 2**20))
    copies = [case.make_inputs(rng) for _ in range(ncopies)]
    return copies, case.make_params(rng)


def _record(b: Backend, case: Workload, threads: int, peak_gflops: float | None, base: str | None, rounds: int) -> dict:
    """A case record with every field, the measured ones None (status "ok" until told otherwise)."""
    lengths = case.key_lengths()
    return {"type": "case", "op": case.op, "case": case.label, "name": case.name, "series": case.series,
            "seq_len": case.seq_len, "shape": case.shape(), "lengths": None if lengths is None else lengths.tolist(),
            "causal": case.causal, "dtype": case.dtype, "threads": threads, "backend": b.name, "device": b.device,
            "status": "ok", "note": None, "copies": None, "flops": case.flops(), "bytes": case.nbytes(),
            "median_us": None, "q1_us": None, "q3_us": None, "min_us": None, "max_us": None,
            "samples": None, "calls_per_sample": None, "gflops": None, "gbps": None,
            "peak_gflops": peak_gflops, "peak_frac": None, "audio_seconds": None, "utterances": None,
            "rtf": None, "utt_per_s": None, "baseline": base, "speedup": None, "rounds": 0,
            "rounds_planned": rounds}


def _measure_case(entries: list[tuple[Backend, dict]], case: Workload,
                  inputs: Callable[[], tuple[list[dict], dict | None]], rounds: int, prog: Progress, threads: int,
                  *, budget_s: float, max_samples: int, **timing) -> None:
    """Times `case` on every backend of `entries` whose record is still "ok", filling in the
    records: `rounds` rounds in which the backends take turns, each with budget_s / rounds and
    its share of the samples, pooled per backend. On a shared machine a load spike then falls on
    every backend's samples rather than on one backend's whole measurement. A backend whose
    inputs, setup or run fail gets status "error" with the exception and drops out."""
    calls: dict[int, list[Callable[[], object]]] = {}
    timings: dict[int, list] = {}
    for r in range(rounds):
        for i, (b, rec) in enumerate(entries):
            if rec["status"] != "ok":
                continue
            prog.start(f"{case.op} {case.label} {case.dtype} {threads}thr {b.name}"
                       + (f" (round {r + 1}/{rounds})" if rounds > 1 else ""))
            try:
                copies, params = inputs()
                rec["copies"] = len(copies)
                with b.active():
                    if i not in calls:
                        calls[i] = b.prepare(case, copies, params)
                    # Let the previous backend's worker threads (OpenMP, OpenBLAS, attnkit) finish
                    # spinning and go to sleep: on 2 cores a spinning neighbour cost the next
                    # backend up to 15%.
                    time.sleep(IDLE_GAP_S)
                    tm = measure(calls[i], sync=b.sync, timed=b.timed, budget_s=budget_s / rounds,
                                 max_samples=max(1, math.ceil(max_samples / rounds)), **timing)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a backend failing on one case must not end the run
                rec.update(status="error", note=f"{type(e).__name__}: {e}")
                calls.pop(i, None)
                prog.done()
                continue
            timings.setdefault(i, []).append(tm)
            _fill(rec, case, pooled(timings[i]), r + 1)
            if r == rounds - 1:
                prog.done()
        if r == 0:
            for b, rec in entries:
                if rec["status"] == "skipped":
                    prog.done()


def _fill(rec: dict, case: Workload, tm, rounds_done: int) -> None:
    rec.update(median_us=tm.median_us, q1_us=tm.q1_us, q3_us=tm.q3_us, min_us=tm.min_us, max_us=tm.max_us,
               samples=tm.samples, calls_per_sample=tm.calls_per_sample, rounds=rounds_done)
    rec.update(case.rates(tm.median_us * 1e-6))
    if rec["gflops"] is not None and rec["peak_gflops"]:
        rec["peak_frac"] = rec["gflops"] / rec["peak_gflops"]
