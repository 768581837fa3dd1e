"""Argument checking shared by the public ops: array library detection and error messages.

Every message reads "<op>: <arg> must <expectation>, got <actual>" (DESIGN.md, principle 9).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from attnkit._core import UnsupportedError

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def describe(x) -> str:
    """A short description of a value for error messages: type, and shape/dtype for arrays."""
    if isinstance(x, np.ndarray):
        return f"a numpy array of shape {x.shape} and dtype {x.dtype}"
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return f"a {type(x).__module__}.{type(x).__name__} of shape {tuple(shape)} and dtype {dtype}"
    return f"{type(x).__name__} {x!r}" if isinstance(x, (numbers.Number, str)) else type(x).__name__


def is_device_array(x) -> bool:
    """True for arrays that live on a GPU (CuPy, or anything exporting a CUDA DLPack device)."""
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None and not isinstance(x, np.ndarray):
        try:
            return dev()[0] in (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
        except Exception:
            return False
    return False


def c_aligned(x: np.ndarray) -> np.ndarray:
    """x itself if C-contiguous and aligned (the kernels read elements through typed pointers),
    else an aligned C-contiguous copy. The flag test costs ~0.2 us where np.require, which every
    decoder step called several times, costs ~1 us."""
    flags = x.flags
    if flags.c_contiguous and flags.aligned:
        return x
    return np.require(x, requirements="CA")


def int_range(arr: np.ndarray) -> tuple[int, int]:
    """(min, max) of a non-empty integer array: through Python for the few entries of a decoder
    step's rows or tokens, where each NumPy reduction costs ~1.3 us (benchmarks/NOTES.md, additive
    17), through NumPy beyond."""
    if arr.size <= 256:
        vals = arr.ravel().tolist()
        return min(vals), max(vals)
    return int(arr.min()), int(arr.max())


def host_float_array(op: str, name: str, x, ndims: tuple[int, ...] | None) -> np.ndarray:
    """Returns x as a float32/float64 NumPy array without copying; raises TypeError/ValueError.
    ``ndims``: the ranks allowed (None: any)."""
    if not isinstance(x, np.ndarray):
        if is_device_array(x):
            raise UnsupportedError(
                f"{op}: {name} is a GPU array, but {op} runs on the CPU only in this release (of the ops, "
                f"only scaled_dot_product_attention has a CUDA kernel yet); got {describe(x)}"
            )
        raise TypeError(f"{op}: {name} must be a numpy.ndarray of float32 or float64, got {describe(x)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{op}: {name} must have dtype float32 or float64, got {x.dtype}")
    if ndims is not None and x.ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{op}: {name} must be {want}, got shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"{op}: {name} must not have an empty axis, got shape {x.shape}")
    return x


def positive_scalar(op: str, name: str, value) -> float:
    # A plain float first: this runs on every decoder step, and the ABC check plus np.isfinite
    # cost ~1.6 us of a 3 us SDPA call (math.isfinite: 0.07 us).
    if type(value) is not float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{op}: {name} must be a real number, got {describe(value)}")
        value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{op}: {name} must be a finite number > 0, got {value}")
    return value


def lengths_array(op: str, name: str, lengths, batch: int, upper: int, upper_name: str) -> np.ndarray:
    """Validates a [B] array of lengths in [0, upper] and returns it as contiguous int64."""
    if is_device_array(lengths):
        raise TypeError(f"{op}: {name} must be a host sequence or numpy array, got {describe(lengths)}")
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise TypeError(f"{op}: {name} must hold integers, got dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise ValueError(f"{op}: {name} must have shape ({batch},) (one per batch entry), got {arr.shape}")
    if batch and (arr.min() < 0 or arr.max() > upper):
        raise ValueError(
            f"{op}: {name} must lie in [0, {upper_name}={upper}], got min {arr.min()} and max {arr.max()}"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)
