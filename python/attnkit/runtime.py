"""Runtime configuration: threads, CPU instruction sets, and what this build contains."""
from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from attnkit import _core


def get_num_threads() -> int:
    """Threads the CPU kernels use (default: ATTNKIT_NUM_THREADS, else the cores this process may use)."""
    return _core.num_threads()


def set_num_threads(n: int) -> None:
    """Sets the number of CPU threads for all later calls (n >= 1). Results are bitwise
    reproducible for a given thread count."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def get_cpu_isa() -> str:
    """The instruction set the CPU kernels run with now: 'avx512', 'avx2' or 'portable'."""
    return _core.active_isa()


def set_cpu_isa(name: str) -> None:
    """Forces a compiled instruction set that this CPU supports (same as ATTNKIT_CPU_ISA).

    Raises ValueError for an unknown name and attnkit.UnsupportedError for one this build or this
    CPU lacks."""
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
