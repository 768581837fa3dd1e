"""Timing one case: warm-up, then samples until a time budget is spent; median and spread.

A sample is the mean over `inner` consecutive calls, with `inner` chosen after the warm-up so a
sample lasts about budget / max_samples (at least 200 us): microsecond calls are then timed over
thousands of calls, and long calls one at a time. Calls cycle through the prepared callables (one
per rotated input copy), so consecutive calls read different buffers. `pooled` merges the
samples of several rounds of one case (the runner's backends take turns round by round).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

MIN_SAMPLE_S = 2e-4


@dataclass
class Timing:
    median_us: float
    q1_us: float
    q3_us: float
    min_us: float
    max_us: float
    samples: int
    calls_per_sample: int
    warmup_calls: int
    total_s: float
    values_us: tuple[float, ...] = ()  # every sample, in the order taken

    @property
    def iqr_us(self) -> float:
        return self.q3_us - self.q1_us


def measure(
    calls: Sequence[Callable[[], object]],
    *,
    budget_s: float = 1.0,
    warmup_s: float = 0.1,
    max_samples: int = 30,
    min_samples: int = 3,
    sync: Callable[[], None] = lambda: None,
    timed: Callable[[Sequence[Callable[[], object]]], float] | None = None,
) -> Timing:
    """Times `calls` (cycled) and returns per-call statistics in microseconds.

    Stops after `max_samples`, or once `budget_s` is spent and `min_samples` are taken, or once
    3 x `budget_s` is spent with at least one sample (a single call longer than the budget).
    `sync` runs after each sample (an asynchronous device backend waits for its work there).
    `timed(batch)`, when given, runs a sample's calls and returns their time in seconds as the
    device measured it (CUDA events); otherwise the host clock times the sample up to `sync`."""
    if not calls:
        raise ValueError("measure: calls must not be empty")
    clock = time.perf_counter
    ncopies = len(calls)
    start = clock()

    # warm-up: at least two calls (first-touch, lazy initialisation), then until warmup_s
    n = 0
    while True:
        calls[n % ncopies]()
        n += 1
        sync()
        elapsed = clock() - start
        if n >= 2 and elapsed >= warmup_s:
            break
        if elapsed >= 3 * max(warmup_s, budget_s):  # one call longer than the whole budget
            break
    per_call = elapsed / n

    target = max(budget_s / max(1, max_samples), MIN_SAMPLE_S)
    inner = max(1, int(target / per_call)) if per_call > 0 else 1000
    # The callables of each sample, built beforehand so the timed loop does no arithmetic; sample
    # k continues the cycle where sample k-1 stopped (a one-call sample must not reuse a copy).
    period = ncopies // math.gcd(inner, ncopies)
    batches = [[calls[(n + k * inner + i) % ncopies] for i in range(inner)] for k in range(period)]

    samples = []
    t_budget = clock()
    while True:
        batch = batches[len(samples) % period]
        if timed is not None:
            samples.append(timed(batch) / inner)
        else:
            t0 = clock()
            for f in batch:
                f()
            sync()
            samples.append((clock() - t0) / inner)
        spent = clock() - t_budget
        if (len(samples) >= max_samples or (spent >= budget_s and len(samples) >= min_samples)
                or spent >= 3 * budget_s):
            break

    return _stats(np.asarray(samples) * 1e6, inner, n, clock() - start)


def _stats(s: np.ndarray, inner: int, warmup_calls: int, total_s: float) -> Timing:
    q1, med, q3 = np.percentile(s, [25, 50, 75])
    return Timing(float(med), float(q1), float(q3), float(s.min()), float(s.max()), len(s), inner, warmup_calls,
                  total_s, tuple(s.tolist()))


def pooled(timings: Sequence[Timing]) -> Timing:
    """The statistics of all samples of `timings` together (rounds of one case on one backend);
    calls_per_sample is the most common of theirs."""
    if not timings:
        raise ValueError("pooled: timings must not be empty")
    inners = [t.calls_per_sample for t in timings]
    return _stats(np.concatenate([t.values_us for t in timings]), max(set(inners), key=inners.count),
                  sum(t.warmup_calls for t in timings), sum(t.total_s for t in timings))
