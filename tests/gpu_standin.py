"""A stand-in GPU array library over NumPy, for the tests of attnkit's GPU paths on machines
with no GPU: its arrays are NumPy arrays dressed as device 0 arrays, and its DLPack capsules say
"CUDA", so the Python checks, the stream handling and the bindings' checks run up to the launch.
"""
import contextlib
import ctypes

import numpy as np

from attnkit import _cuda

_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype, _get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
KDL_CUDA = 2


class StandInArray:
    """A NumPy array dressed as a GPU array of device 0."""

    def __init__(self, a):
        self.a = a

    shape = property(lambda self: self.a.shape)
    ndim = property(lambda self: self.a.ndim)
    dtype = property(lambda self: self.a.dtype)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.a.shape, "typestr": self.a.dtype.str, "data": (self.a.ctypes.data, False), "version": 3}

    def __getitem__(self, index):
        return StandInArray(self.a[index])

    def __add__(self, other):
        return StandInArray(self.a + other.a)


class StandInLibrary:
    """The adapter interface of attnkit._cuda (_CuPy, _Torch), over NumPy."""

    name = "standin"

    def __init__(self):
        self.capsule_streams = []
        self.running = []

    def device_of(self, x):
        return 0

    def dtype_name(self, x):
        return x.a.dtype.name

    def current_stream(self, device):
        return 0

    @contextlib.contextmanager
    def running_on(self, device, stream, current):
        self.running.append((device, stream, current))
        yield

    def empty(self, shape, like):
        poison = np.nan if like.a.dtype.kind == "f" else -1  # unwritten elements show
        return StandInArray(np.full(shape, poison, like.a.dtype))

    def from_host(self, array, like):
        return StandInArray(np.array(array))

    def last_axis_contiguous(self, x):
        return x if x.a.shape[-1] == 1 or x.a.strides[-1] == x.a.itemsize else StandInArray(np.ascontiguousarray(x.a))

    def broadcast_to(self, x, shape):
        b = np.broadcast_to(x.a, shape)
        return StandInArray(np.lib.stride_tricks.as_strided(x.a, b.shape, b.strides))  # writeable, as CuPy's

    def cast_like(self, x, like):
        return StandInArray(x.a.astype(like.a.dtype, copy=False))

    def as_int64(self, x):
        return StandInArray(x.a.astype(np.int64, copy=False))

    def zeros(self, shape, like):
        return StandInArray(np.zeros(shape, like.a.dtype))

    def copy(self, x):
        return StandInArray(np.array(x.a, order="C"))

    def contiguous(self, x):
        return StandInArray(np.ascontiguousarray(x.a))

    def linear(self, x, weight, bias=None):
        y = x.a @ weight.a.T
        return StandInArray(np.ascontiguousarray(y if bias is None else y + bias.a))

    def capsule(self, x):
        self.capsule_streams.append(-1)
        cap = np.ascontiguousarray(x.a).__dlpack__() if not x.a.flags.writeable else x.a.__dlpack__()
        ctypes.c_int32.from_address(_get_pointer(cap, b"dltensor") + 8).value = KDL_CUDA  # DLTensor.device
        return cap


def install(monkeypatch) -> StandInLibrary:
    """Makes attnkit._cuda treat StandInArrays as arrays of a StandInLibrary (the ``lib`` fixture
    of conftest.py)."""
    standin = StandInLibrary()
    real = _cuda._library
    monkeypatch.setattr(_cuda, "_library", lambda x: standin if isinstance(x, StandInArray) else real(x))
    return standin
