"""Row selection for batched decoding states (beam search reorders and duplicates rows).

A state is any nesting of arrays whose first axis is the row ``N``: plain arrays (weights
``[N, T]``, multi-head ``[N, H, T]``, Loc2D windows ``[N, W, T]``), NamedTuples of them
(``CoverageState``, ``LocRecState``, ``ForwardTAState``, the decoder's and the LM's own states),
tuples and lists of them (one entry per layer), and None for "nothing kept".
"""
from __future__ import annotations

from typing import Any

import numpy as np

from attnkit._arrays import describe, int_range, is_device_array


def row_index(op: str, name: str, index, n_rows: int) -> np.ndarray:
    """``index`` as a non-empty int64 ``[M]`` array of rows in [0, n_rows) (repeats allowed)."""
    arr = np.asarray(index)
    if arr.dtype.kind not in "iu" or arr.ndim != 1 or arr.size == 0:
        raise TypeError(f"{op}: {name} must be a non-empty 1-D integer array, got {describe(index)}")
    lo, hi = int_range(arr)
    if lo < 0 or hi >= n_rows:
        raise ValueError(f"{op}: {name} must lie in [0, {n_rows}), got min {lo} and max {hi}")
    return arr.astype(np.int64, copy=False)


def select_rows(state: Any, index: np.ndarray) -> Any:
    """The same structure with every array replaced by ``array[index]`` (rows reordered); NumPy or
    GPU arrays (then ``index`` is a GPU array of the same library)."""
    if state is None:
        return None
    if isinstance(state, np.ndarray) or is_device_array(state):
        return state[index]  # a GPU state takes a GPU index
    if isinstance(state, tuple):
        items = [select_rows(v, index) for v in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    if isinstance(state, list):
        return [select_rows(v, index) for v in state]
    raise TypeError(f"select_rows: state must be arrays, tuples, lists or None, got {describe(state)}")

