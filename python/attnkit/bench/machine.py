"""What the benchmark knows about the machine: thread control, the matrix-product peak, versions."""
from __future__ import annotations

import ctypes
import datetime
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version

import numpy as np

import attnkit

# Peers whose versions go into the JSON header (looked up from package metadata, never imported).
PEERS = ("numpy", "torch", "onnxruntime", "onnx", "cupy-cuda13x", "cupy-cuda12x", "cupy", "threadpoolctl", "tqdm")


class BlasThreads:
    """Sets NumPy's BLAS thread count after NumPy is loaded (environment variables such as
    OPENBLAS_NUM_THREADS are only read at load time, so setting them now would do nothing).

    Uses threadpoolctl when installed; else calls OpenBLAS's own setter through ctypes on the
    OpenBLAS library NumPy has loaded (scipy-openblas in NumPy's wheels); else leaves the count
    alone and says so in `how`."""

    def __init__(self):
        self.how = "not controlled"
        self._controller = None
        self._limiter = None
        self._set = self._get = None
        self._original = None
        try:
            import threadpoolctl

            self._controller = threadpoolctl.ThreadpoolController()
            blas = [m for m in self._controller.info() if m.get("user_api") == "blas"]
            names = ", ".join(f"{m['internal_api']} {m.get('version')}" for m in blas) or "no BLAS found"
            self.how = f"threadpoolctl {threadpoolctl.__version__} ({names})"
            return
        except ImportError:
            pass
        for path in _loaded_libraries("openblas"):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix in ("scipy_openblas", "openblas"):
                for suffix in ("64_", ""):
                    setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    if setter is not None and getter is not None:
                        setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
                        self._set, self._get = setter, getter
                        self.how = f"{prefix}_set_num_threads{suffix} via ctypes ({os.path.basename(path)})"
                        return
        env = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
        self.how = f"not controlled (no threadpoolctl, no OpenBLAS setter found; environment: {env or 'unset'})"

    def get(self) -> int | None:
        if self._controller is not None:
            counts = [m["num_threads"] for m in self._controller.info() if m.get("user_api") == "blas"]
            return counts[0] if counts else None
        return int(self._get()) if self._get is not None else None

    def set(self, n: int) -> None:
        if self._original is None:
            self._original = self.get()
        if self._controller is not None:
            if self._limiter is not None:
                self._limiter.restore_original_limits()
            self._limiter = self._controller.limit(limits=n, user_api="blas")
        elif self._set is not None:
            self._set(n)

    def restore(self) -> None:
        if self._limiter is not None:
            self._limiter.restore_original_limits()
            self._limiter = None
        elif self._set is not None and self._original is not None:
            self._set(self._original)
        self._original = None


def _loaded_libraries(word: str) -> list[str]:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if word in line.lower() and "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if word in os.path.basename(p).lower())


def set_all_threads(n: int, blas: BlasThreads) -> None:
    """One thread count for everything that computes: attnkit, NumPy's BLAS, torch (if loaded)."""
    attnkit.set_num_threads(n)
    blas.set(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def measure_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5, seed: int = 0) -> dict:
    """The machine's matrix-product ceiling at the current thread count: the median GFLOP/s of
    ``np.matmul`` on two n x n matrices (2*n^3 FLOPs), after one warm-up call."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    np.matmul(a, b, out=c)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {"dtype": dtype, "n": n, "repeats": len(times), "median_s": med,
            "gflops": 2.0 * n**3 / med / 1e9, "max_gflops": 2.0 * n**3 / min(times) / 1e9}


def measure_gpu_peak(dtype: str = "float32", n: int = 8192, repeats: int = 5) -> dict:
    """The current CUDA device's ceilings, timed with CUDA events (medians after a warm-up):
    a cupy.matmul of two n x n matrices (GFLOP/s; tensor cores where CuPy uses them) and a
    device-to-device copy of 1 GiB (GB/s, read plus write)."""
    import cupy

    a = cupy.random.standard_normal((n, n), dtype=cupy.float32).astype(dtype)
    c = cupy.empty_like(a)
    src = cupy.empty(2**28, cupy.float32)
    dst = cupy.empty_like(src)

    def median_s(run):
        run()
        times = []
        for _ in range(max(1, repeats)):
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, end) * 1e-3)
        return float(np.median(times))

    mm = median_s(lambda: cupy.matmul(a, a, out=c))
    cp = median_s(lambda: dst.__setitem__(Ellipsis, src))
    return {"dtype": dtype, "n": n, "repeats": repeats, "gflops": 2.0 * n**3 / mm / 1e9,
            "copy_gbps": 2.0 * src.nbytes / cp / 1e9,
            "device": cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()}


def busy_cpus(interval: float = 0.2) -> float | None:
    """CPUs kept busy by other processes: the non-idle share of all CPUs over `interval` seconds
    while this process sleeps, times the CPU count (from /proc/stat; None where unavailable).
    On a shared 2-core machine a neighbour's load makes multi-threaded figures meaningless."""

    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v[:8]), idle

    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = t1 - t0
    return None if total <= 0 else round((1 - (i1 - i0) / total) * (os.cpu_count() or 1), 2)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peer_versions() -> dict:
    out = {}
    for name in PEERS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def numpy_blas() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg["Build Dependencies"]["blas"]
        return f"{b.get('name')} {b.get('version')}"
    except Exception:  # older NumPy without mode="dicts", or a different layout
        return "unknown"


def header(threads: list[int], blas: BlasThreads, argv: list[str] | None = None) -> dict:
    """The first JSON line of a run: everything needed to tell two runs' machines apart."""
    cfg = attnkit.show_config()
    return {
        "type": "header",
        "schema": 1,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": argv,
        "attnkit": cfg,
        "versions": peer_versions(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "threads": threads,
        "busy_cpus_at_start": busy_cpus(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "numpy_blas": numpy_blas(),
        "blas_threads": blas.how,
    }
