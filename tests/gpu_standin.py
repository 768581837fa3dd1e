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


def _unwrap(x):
    """The NumPy array behind a StandInArray (recursing into lists and tuples). A NumPy array
    mixed into device arithmetic is a TypeError, as in CuPy."""
    if isinstance(x, StandInArray):
        return x.a
    if isinstance(x, np.ndarray):
        raise TypeError(f"a host numpy array mixed with stand-in GPU arrays: shape {x.shape}")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _wrap(x):
    """NumPy results as StandInArrays; scalars become 0-d arrays (CuPy's reductions return those)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return StandInArray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    return x


def _index(index):
    """An index with StandInArrays in it as NumPy's (host integer arrays are allowed, as in CuPy)."""
    if isinstance(index, tuple):
        return tuple(_index(i) for i in index)
    return index.a if isinstance(index, StandInArray) else index


class StandInArray:
    """A NumPy array dressed as a GPU array of device 0, with CuPy's array API over it: operators,
    indexing and the methods the decoder loop uses return StandInArrays, a NumPy array in device
    arithmetic is a TypeError, and implicit conversion to NumPy is refused. Every read back to
    the host (bool(), int(), float(), .get(), xp.asnumpy) adds 1 to ``StandInArray.host_reads``."""

    host_reads = 0
    __hash__ = None

    def __init__(self, a):
        self.a = a

    shape = property(lambda self: self.a.shape)
    ndim = property(lambda self: self.a.ndim)
    dtype = property(lambda self: self.a.dtype)
    size = property(lambda self: self.a.size)
    T = property(lambda self: StandInArray(self.a.T))

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.a.shape, "typestr": self.a.dtype.str, "data": (self.a.ctypes.data, False), "version": 3}

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion of a stand-in GPU array to a NumPy array is not allowed (as CuPy)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if "out" in kwargs:
            kwargs["out"] = tuple(_unwrap(o) for o in kwargs["out"])
        with np.errstate(all="ignore"):  # CuPy does not warn about inf - inf and the like
            return _wrap(getattr(ufunc, method)(*(_unwrap(x) for x in inputs), **kwargs))

    def __getitem__(self, index):
        return StandInArray(self.a[_index(index)])

    def __setitem__(self, index, value):
        self.a[_index(index)] = _unwrap(value)

    def __len__(self):
        return len(self.a)

    def _read(self):
        StandInArray.host_reads += 1
        return self.a

    def __bool__(self):
        return bool(self._read())

    def __int__(self):
        return int(self._read())

    def __float__(self):
        return float(self._read())

    def get(self):
        return np.array(self._read())

    def __getattr__(self, name):
        if name not in _METHODS:
            raise AttributeError(name)
        method = getattr(self.a, name)
        return lambda *args, **kwargs: _wrap(method(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))


_METHODS = {"reshape", "astype", "max", "min", "sum", "any", "all", "argmax", "argmin", "copy", "transpose", "ravel"}
_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
           "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
           "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}
for _name, _ufunc in _BINARY.items():
    setattr(StandInArray, f"__{_name}__", lambda self, other, f=_ufunc: f(self, other))
    setattr(StandInArray, f"__r{_name}__", lambda self, other, f=_ufunc: f(other, self))
for _name, _ufunc in {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
                      "ge": np.greater_equal}.items():
    setattr(StandInArray, f"__{_name}__", lambda self, other, f=_ufunc: f(self, other))
for _name, _ufunc in {"neg": np.negative, "invert": np.invert, "abs": np.absolute}.items():
    setattr(StandInArray, f"__{_name}__", lambda self, f=_ufunc: f(self))


class StandInXp:
    """The stand-in's ``cupy`` module: NumPy's functions over StandInArrays; ``asarray`` copies
    host data in, ``asnumpy`` reads it back (counted in ``StandInArray.host_reads``)."""

    @staticmethod
    def asarray(x, dtype=None):
        return StandInArray(np.array(x.a if isinstance(x, StandInArray) else x, dtype=dtype))

    @staticmethod
    def asnumpy(x):
        return np.array(x._read())

    def __getattr__(self, name):
        f = getattr(np, name)
        if isinstance(f, type) or not callable(f):
            return f
        return lambda *args, **kwargs: _wrap(f(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))


class StandInLibrary:
    """The adapter interface of attnkit._cuda (_CuPy, _Torch), over NumPy."""

    name = "standin"
    xp = StandInXp()

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

    def element_strides(self, x):
        return tuple(s // x.a.itemsize for s in x.a.strides)

    def repeat(self, x, repeats, axis):
        return StandInArray(np.repeat(x.a, repeats, axis=axis))

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
