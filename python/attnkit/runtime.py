"""Runtime configuration: threads, CPU instruction sets, and what this build contains."""
from __future__ import annotations

import numbers
import platform
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from attnkit import _core


def get_num_threads() -> int:
    """Threads the CPU kernels use (default: ATTNKIT_NUM_THREADS, else the cores this process may use)."""
    return _core.num_threads()


def set_num_threads(n: int) -> None:
    """Sets the number of CPU threads for all later calls (1 <= n <= 1024). Results are bitwise
    reproducible for a given thread count."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    if n > _core.max_threads:
        raise ValueError(f"set_num_threads: n must be <= {_core.max_threads} (one OS thread each), got {n}")
    _core.set_num_threads(int(n))


def get_cpu_isa() -> str:
    """The instruction set the CPU kernels run with now: 'avx512', 'avx2' or 'portable'."""
    return _core.active_isa()


def set_cpu_isa(name: str) -> None:
    """Forces a compiled instruction set that this CPU supports (same as ATTNKIT_CPU_ISA).

    Raises ValueError for an unknown name and attnkit.UnsupportedError for one this build or this
    CPU lacks."""
    if not isinstance(name, str):
        raise TypeError(f"set_cpu_isa: name must be a str ('portable', 'avx2' or 'avx512'), got {type(name).__name__}")
    _core.set_active_isa(name)


def _version() -> str:
    try:
        return version("attnkit")
    except PackageNotFoundError:
        return "unknown"


def show_config() -> dict:
    """What `attnkit info` prints: version, ISAs, threads, and CUDA support, as a dict."""
    count, why = _core.cuda_device_count()
    return {
        "version": _version(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_isa_compiled": list(_core.compiled_isas()),
        "cpu_isa_supported": list(_core.supported_isas()),
        "cpu_isa_active": _core.active_isa(),
        "num_threads": _core.num_threads(),
        "cuda_built": _core.cuda_built(),
        "cuda_runtime": _core.cuda_runtime_version() or None,
        "cuda_devices": count,
        "cuda_note": why or None,
    }
