"""attnkit's Linear layer: y = x W^T + b on attnkit's own threads, for projections of any size.

Model code uses this rather than NumPy's ``@``: NumPy's BLAS keeps its threads spinning after
each call, which slows attnkit's pool on the same cores (benchmarks/NOTES.md, "Linear layer").
Weights that are used more than once are packed once (``PackedWeight``).
"""
from __future__ import annotations

import numpy as np

from attnkit import _core
from attnkit._arrays import c_aligned


# The ISAs whose kernels widen float16 panels with a hardware conversion (vec.h, load_half).
_HARDWARE_HALF_ISAS = ("avx2", "avx512")


class PackedWeight:
    """A Linear weight ``[A, K]`` stored once in the panel layout of attnkit's linear kernel.

    Panels of P = 64 bytes of outputs (16 float32, 8 float64), each ``[K, P]`` contiguous, the last
    one zero-padded: the kernel broadcasts x and adds into P output accumulators, with no
    horizontal sums, about twice as fast as the ``[A, K]`` layout on a decoder step's products
    (benchmarks/NOTES.md). Modules pack their weights once and pass this to ``linear`` in place of
    the array. ``shape`` and ``dtype`` are those of the original weight.

    A float32 weight whose every value is a float16 value (a model stored in float16 and loaded
    as float32) keeps its panels in float16 (``half``): the kernel widens them exactly as it loads
    them, so the results are bit for bit the same, from half the memory and half the bytes read per
    product (a decoder step's few rows wait on those bytes). ``half=None`` (default) does so when
    the weight allows it and the active CPU ISA widens in hardware (AVX2 and AVX-512: F16C; the
    portable build's integer widening made products 4-7x slower); ``half=True`` whenever the
    weight allows it (ValueError otherwise); ``half=False`` never.
    """

    __slots__ = ("shape", "dtype", "panels", "half")

    def __init__(self, weight: np.ndarray, *, half: bool | None = None):
        weight = np.asarray(weight)
        if weight.ndim != 2 or weight.dtype not in (np.float32, np.float64):
            raise TypeError(f"PackedWeight: weight must be a 2-D float32 or float64 array, got "
                            f"{weight.dtype} {weight.shape}")
        A, K = weight.shape
        P = 64 // weight.itemsize
        panels = np.empty((-(-A // P), K, P), weight.dtype)
        _core.pack_linear_weight(c_aligned(weight), panels)
        if half is False or (half is None and _core.active_isa() not in _HARDWARE_HALF_ISAS):
            self.half = False
        else:
            self.half = weight.dtype == np.float32 and _exact_in_half(panels)
            if half and not self.half:
                raise ValueError(f"PackedWeight: half=True needs a float32 weight of float16 values, got "
                                 f"{weight.dtype} values that float16 does not hold exactly")
        if self.half:
            panels = panels.astype(np.float16)
        panels.flags.writeable = False
        self.shape, self.dtype, self.panels = (A, K), weight.dtype, panels

    def unpacked(self) -> np.ndarray:
        """The weight ``[A, K]`` again (a new array in ``dtype``), e.g. to copy it to a GPU."""
        n, K, P = self.panels.shape
        w = self.panels.transpose(0, 2, 1).reshape(n * P, K)[:self.shape[0]]
        return np.ascontiguousarray(w, dtype=self.dtype)

    def __repr__(self) -> str:
        stored = ", stored as float16" if self.half else ""
        return f"PackedWeight(shape={self.shape}, dtype={self.dtype}{stored})"


def _exact_in_half(values: np.ndarray) -> bool:
    """True when every value of a float32 array survives float32 -> float16 -> float32 unchanged
    (infinities included; NaN never, as its payload may not)."""
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    return bool(np.array_equal(half.astype(np.float32), values))


def linear(x: np.ndarray, weight: np.ndarray | PackedWeight, bias: np.ndarray | None = None, *,
           tanh: bool = False) -> np.ndarray:
    """x ``[..., K]`` weight^T + bias, ``[..., A]`` for weight ``[A, K]`` (an array, or the same
    weight as a ``PackedWeight``), on attnkit's own threads; with ``tanh``, tanh of it, applied
    before the outputs leave the registers (NumPy's float32 tanh is scalar here, ~3-5 ns per
    element: 9 us of an AttDot step's [10, 320] query, benchmarks/NOTES.md).

    A step's projections go through this rather than ``@``: NumPy's BLAS keeps its threads
    spinning after each call, and beside attnkit's pool on 2 cores that made a 2-thread AttLoc
    step (N=10, T=200) slower than a 1-thread one (1255 vs 999 us; 587 us with this). On a
    loaded machine OpenBLAS's threads are worse still: a [4, 50, 128] x [128, 128] product took
    111 ms beside a training run, this kernel 0.1 ms. Model code uses this for every projection."""
    lead = x.shape[:-1]
    # C-contiguous and aligned (np.ascontiguousarray keeps a misaligned view, e.g. from an
    # offset np.frombuffer, and the kernel reads elements through typed pointers).
    x = c_aligned(np.asarray(x, dtype=weight.dtype))
    if x.ndim != 2:
        x = x.reshape(-1, x.shape[-1])
    A = weight.shape[0]
    out = np.empty((x.shape[0], A), dtype=weight.dtype)
    if type(weight) is PackedWeight:
        _core.linear(x, weight.panels, bias, out, True, tanh)
    else:
        _core.linear(x, weight, bias, out, False, tanh)
    return out if len(lead) == 1 else out.reshape(*lead, A)
