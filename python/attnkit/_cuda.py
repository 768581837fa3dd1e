"""GPU arrays for attnkit's CUDA kernels: which library made them (CuPy, or PyTorch through
DLPack), the stream a call runs on, outputs allocated by that library, and DLPack capsules.

A GPU call runs on the caller's current stream of the arrays' library (or on an explicit
``stream=``, which first waits for the current one), allocates its outputs with that library
on that stream, and never waits on the host: the capsules are asked for with DLPack's stream
-1 ("already ordered"), since the kernel is launched on the very stream the library ordered
the arrays' work on. So a call can be captured into a CUDA graph.
"""
from __future__ import annotations

import contextlib

from attnkit import _core
from attnkit._arrays import describe, is_device_array

FLOAT_DTYPES = ("float32", "float16", "bfloat16")


class _CuPy:
    name = "cupy"

    def __init__(self, module):
        self.xp = module

    def device_of(self, x) -> int:
        return x.device.id

    def dtype_name(self, x) -> str:
        return x.dtype.name

    def current_stream(self, device: int) -> int:
        with self.xp.cuda.Device(device):
            return self.xp.cuda.get_current_stream().ptr

    @contextlib.contextmanager
    def running_on(self, device: int, stream: int, current: int):
        """Device `device` and `stream` current; `stream` first waits for `current`'s work."""
        with self.xp.cuda.Device(device):
            if stream == current:
                yield
                return
            launch = self.xp.cuda.ExternalStream(stream, device)
            launch.wait_event(self.xp.cuda.get_current_stream().record())
            with launch:
                yield

    def empty(self, shape, like):
        return self.xp.empty(shape, dtype=like.dtype)

    def from_host(self, array, like):
        return self.xp.asarray(array)

    def last_axis_contiguous(self, x):
        return x if x.shape[-1] == 1 or x.strides[-1] == x.itemsize else self.xp.ascontiguousarray(x)

    def broadcast_to(self, x, shape):
        return self.xp.broadcast_to(x, shape)

    def element_strides(self, x):
        return tuple(s // x.itemsize for s in x.strides)

    def repeat(self, x, repeats, axis):
        return self.xp.repeat(x, repeats, axis=axis)

    def cast_like(self, x, like):
        return x.astype(like.dtype, copy=False)

    def as_int64(self, x):
        return x.astype(self.xp.int64, copy=False)

    def capsule(self, x):
        return x.__dlpack__(stream=-1)

    def zeros(self, shape, like):
        return self.xp.zeros(shape, dtype=like.dtype)

    def copy(self, x):
        return self.xp.array(x, order="C", copy=True)

    def contiguous(self, x):
        return self.xp.ascontiguousarray(x)

    def linear(self, x, weight, bias=None):
        """x @ weight.T (+ bias), C-contiguous (cuBLAS through the library)."""
        y = x @ weight.T
        if bias is not None:
            y += bias
        return self.xp.ascontiguousarray(y)


class _Torch:
    name = "torch"

    def __init__(self, module):
        self.torch = module

    def device_of(self, x) -> int:
        return x.device.index

    def dtype_name(self, x) -> str:
        return str(x.dtype).removeprefix("torch.")

    def current_stream(self, device: int) -> int:
        return self.torch.cuda.current_stream(device).cuda_stream

    @contextlib.contextmanager
    def running_on(self, device: int, stream: int, current: int):
        torch = self.torch
        with torch.cuda.device(device), torch.no_grad():
            if stream == current:
                yield
                return
            launch = torch.cuda.ExternalStream(stream, device=device)
            launch.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(launch):
                yield

    def empty(self, shape, like):
        return self.torch.empty(shape, dtype=like.dtype, device=like.device)

    def from_host(self, array, like):
        return self.torch.as_tensor(array, device=like.device)

    def last_axis_contiguous(self, x):
        return x if x.shape[-1] == 1 or x.stride(-1) == 1 else x.contiguous()

    def broadcast_to(self, x, shape):
        return self.torch.broadcast_to(x, shape)

    def element_strides(self, x):
        return tuple(x.stride())

    def repeat(self, x, repeats, axis):
        return self.torch.repeat_interleave(x, repeats, dim=axis)

    def cast_like(self, x, like):
        return x.to(like.dtype)

    def as_int64(self, x):
        return x.to(self.torch.int64)

    def capsule(self, x):
        return x.detach().__dlpack__(stream=-1)

    def zeros(self, shape, like):
        return self.torch.zeros(shape, dtype=like.dtype, device=like.device)

    def copy(self, x):
        return x.detach().clone(memory_format=self.torch.contiguous_format)

    def contiguous(self, x):
        return x.contiguous()

    def linear(self, x, weight, bias=None):
        y = x @ weight.T
        if bias is not None:
            y += bias
        return y.contiguous()


def _library(x):
    """The adapter of the library that made GPU array x, or None for one attnkit does not know."""
    top = type(x).__module__.split(".")[0]
    if top == "cupy":
        import cupy

        return _CuPy(cupy)
    if top == "torch":
        import torch

        return _Torch(torch)
    return None


def stream_pointer(op: str, stream) -> int:
    """A stream argument as a cudaStream_t integer: an int, a CuPy stream (.ptr), a PyTorch
    stream (.cuda_stream) or anything with __cuda_stream__."""
    if isinstance(stream, int) and not isinstance(stream, bool):
        if stream < 0:
            raise ValueError(f"{op}: stream must be a cudaStream_t pointer >= 0, got {stream}")
        return stream
    for attr in ("ptr", "cuda_stream"):
        value = getattr(stream, attr, None)
        if isinstance(value, int):
            return value
    protocol = getattr(stream, "__cuda_stream__", None)
    if protocol is not None:
        return int(protocol()[1])
    raise TypeError(f"{op}: stream must be a CuPy or PyTorch stream or a cudaStream_t integer, got {describe(stream)}")


class GpuCall:
    """One GPU call: checks that the named arrays are GPU arrays of one library on one device,
    and, as a context, makes that device and the launch stream current for everything the call
    allocates or copies."""

    def __init__(self, op: str, arrays: dict, stream=None):
        self.op = op
        first_name, first = next((n, x) for n, x in arrays.items() if x is not None and is_device_array(x))
        for name, x in arrays.items():
            if x is not None and not is_device_array(x):
                raise TypeError(
                    f"{op}: {name} must be a GPU array like {first_name} (attnkit never copies between host and "
                    f"device), got {describe(x)}"
                )
        self.lib = _library(first)
        if self.lib is None:
            raise TypeError(f"{op}: {first_name} must be a CuPy array or a PyTorch CUDA tensor, got {describe(first)}")
        if not _core.cuda_built():
            raise _core.UnsupportedError(
                f"{op}: {first_name} is a GPU array, but this attnkit was built without CUDA (no nvcc at build time)"
            )
        self.device = self.lib.device_of(first)
        for name, x in arrays.items():
            if x is not None:
                self.same_kind(name, x)
        self.current = self.lib.current_stream(self.device)
        self.stream = self.current if stream is None else stream_pointer(op, stream)
        self._context = None

    def __enter__(self):
        self._context = self.lib.running_on(self.device, self.stream, self.current)
        return self._context.__enter__()

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)

    def dtype_name(self, x) -> str:
        return self.lib.dtype_name(x)

    def same_kind(self, name: str, x) -> None:
        """Raises unless x is a GPU array of this call's library and device."""
        lib = _library(x) if is_device_array(x) else None
        if lib is None or lib.name != self.lib.name:
            raise TypeError(f"{self.op}: {name} must be a {self.lib.name} GPU array like the inputs, got {describe(x)}")
        if lib.device_of(x) != self.device:
            raise ValueError(f"{self.op}: {name} must be on device cuda:{self.device}, got cuda:{lib.device_of(x)}")

    def capsule(self, x):
        return None if x is None else self.lib.capsule(x)
