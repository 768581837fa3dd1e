"""Weights by name: selecting, checking and casting the arrays of a state_dict.

Every NumPy module of ``attnkit.asr`` takes its weights as a mapping from ESPnet's state_dict
names (relative to the module) to arrays and declares the shapes it needs; ``checked_params``
turns such a mapping into read-only C-contiguous arrays of the module's dtype, or raises one
ValueError that lists every missing, unexpected and wrongly shaped entry.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from attnkit._arrays import describe, host_float_array, lengths_array

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_dtype(op: str, dtype) -> np.dtype:
    """The compute dtype of a module: float32 or float64 (TypeError otherwise)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: dtype must be float32 or float64, got {describe(dtype)}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{op}: dtype must be float32 or float64, got {dt}")
    return dt


def with_prefix(params: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``params`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def shape_errors(params: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Human-readable problems of ``params`` against the expected ``shapes`` (empty: all good)."""
    problems = []
    missing = sorted(n for n in shapes if n not in params)
    unexpected = sorted(n for n in params if n not in shapes)
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    for name, shape in shapes.items():
        if name in params:
            got = tuple(np.shape(params[name]))
            if got != tuple(shape):
                problems.append(f"{name!r} must have shape {tuple(shape)}, got {got}")
    return problems


def checked_params(op: str, params: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]],
                   dtype, arg: str = "params") -> dict[str, np.ndarray]:
    """``{name: array}`` for exactly the names of ``shapes``, cast to ``dtype`` and read-only.

    Values may be anything ``np.asarray`` takes (NumPy arrays of any float dtype, CPU torch
    tensors). Raises TypeError for a non-mapping, ValueError listing every problem otherwise.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"{op}: {arg} must be a mapping of parameter names to arrays, got {describe(params)}")
    for key in params:
        if not isinstance(key, str):
            raise TypeError(f"{op}: {arg} keys must be str, got {describe(key)}")
    problems = shape_errors(params, shapes)
    if problems:
        raise ValueError(f"{op}: {arg} must match the module's parameters; " + "; ".join(problems))
    out = {}
    for name in shapes:
        arr = np.asarray(params[name])
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{op}: {arg}[{name!r}] must hold numbers, got dtype {arr.dtype}")
        arr = np.array(arr, dtype=dtype, order="C")
        arr.flags.writeable = False
        out[name] = arr
    return out


def padded_batch(op: str, x, lengths, features: int, *, name: str = "x", what: str = "") -> tuple[np.ndarray, np.ndarray]:
    """A padded batch of feature sequences: ``x [B, T, features]`` (a host float array) and int64
    lengths ``[B]`` in [0, T] (all T when None). ``what`` is added to the shape in the message."""
    x = host_float_array(op, name, x, (3,))
    B, T, F = x.shape
    if F != features:
        raise ValueError(f"{op}: {name} must have shape [B, T, {features}]{what}, got {x.shape}")
    lengths = np.full(B, T, np.int64) if lengths is None else lengths_array(op, "lengths", lengths, B, T, "T")
    return x, lengths
