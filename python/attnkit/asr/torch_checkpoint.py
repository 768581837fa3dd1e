"""Reading ``torch.save`` files (state_dicts) without PyTorch and without running pickled code.

A ``torch.save`` file is a pickle whose tensors are calls to ``torch._utils._rebuild_tensor_v2``
on "persistent" storages that live elsewhere in the file: entries ``<root>/data/<key>`` of a zip
archive (torch >= 1.6), or raw blocks after the pickle (the legacy format, still found in espnet1
``model.acc.best`` files). Unpickling normally imports and calls whatever global the file names,
so a malicious file runs code; this reader's ``find_class`` hands out only the few globals a
state_dict (or an espnet1 snapshot) needs, mapped to harmless stand-ins that build NumPy arrays,
and raises ``UnsafeCheckpointError`` naming any other global before it is touched (and any BUILD
that would set attributes on something other than the containers and arrays a state_dict holds).
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from attnkit._arrays import describe

#: First pickle of a legacy (pre-zip) torch.save file, and the protocol number after it.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class UnsafeCheckpointError(ValueError):
    """A checkpoint names a Python global that a state_dict never needs (it could run code)."""


class _StorageType(NamedTuple):
    """Stand-in for ``torch.FloatStorage`` & co. inside persistent ids: just the element dtype.
    Immutable, so that a file cannot alter the shared stand-ins."""

    name: str
    dtype: np.dtype


_STORAGE_TYPES = {name: _StorageType(name, np.dtype(dt)) for name, dt in {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?"}.items()}


class _Storage:
    """A loaded storage: its elements as a 1-D NumPy array (bfloat16 already widened to float32)."""

    def __init__(self, data: np.ndarray):
        self.data = data


def _int_tuple(what: str, value) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in value):
        raise ValueError(f"{what} must be a tuple of integers >= 0, got {describe(value)}")
    return value


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[,
    metadata])`` as a NumPy array (a copy). Offsets and strides are checked against the storage
    before any strided view is made, so a damaged file cannot read outside it."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"a tensor must be built on a storage of the file, got {describe(storage)}")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise ValueError(f"a tensor's storage offset must be an integer >= 0, got {describe(storage_offset)}")
    size, stride = _int_tuple("a tensor's size", size), _int_tuple("a tensor's stride", stride)
    if len(size) != len(stride):
        raise ValueError(f"a tensor's size {size} and stride {stride} must have the same length")
    data = storage.data
    if 0 in size:
        return np.zeros(size, data.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    numel = int(np.prod(size, dtype=object))
    if numel > max(data.shape[0], 1 << 28):
        # Only overlapping (stride-0) views exceed their storage; a huge one is a damaged file.
        raise ValueError(f"a tensor of size {size} must not exceed its storage of {data.shape[0]} elements")
    if last >= data.shape[0]:
        raise ValueError(f"a tensor of size {size}, stride {stride} and offset {storage_offset} must lie "
                         f"inside its storage of {data.shape[0]} elements")
    view = np.lib.stride_tricks.as_strided(data[storage_offset:], shape=size,
                                           strides=tuple(s * data.itemsize for s in stride), writeable=False)
    return np.array(view, order="C")


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    """``torch._utils._rebuild_parameter``: a Parameter is its data here."""
    return data


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """What NumPy arrays and scalars pickle to (espnet1 snapshots carry chainer's trainer state as
    NumPy values); the same set torch's own ``weights_only`` loader allows."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray

    allowed = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = _latin1_bytes
    return allowed


def _latin1_bytes(text, encoding="latin1") -> bytes:
    """``_codecs.encode(text, "latin1")``: how pickle protocol 2 stores the bytes of a NumPy
    array; only that encoding is honoured."""
    if not isinstance(text, str) or encoding != "latin1":
        raise ValueError(f"_codecs.encode is allowed only as (str, 'latin1'), got {describe(text)}, {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }
    allowed.update({("torch", name): t for name, t in _STORAGE_TYPES.items()})
    allowed.update(_numpy_globals())
    return allowed


_BUILDABLE = (collections.OrderedDict, np.ndarray, np.dtype)


class _RestrictedUnpickler(pickle._Unpickler):
    """An Unpickler that resolves only allow-listed globals and reads storages through ``load_storage``.

    It is the pure-Python unpickler (a state_dict's pickle is small; the tensor data lives in the
    storages) because that one lets BUILD be restricted too: BUILD sets attributes, and on an
    allowed class or function it would rewrite shared Python state. It is allowed only on the
    instances a state_dict or snapshot builds: OrderedDict (``_metadata``), NumPy arrays, dtypes.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, source: str, load_storage: Callable[[tuple], _Storage]):
        super().__init__(file)
        self._source, self._load_storage = source, load_storage
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._source}: refusing to load the Python global {module}.{name}: a PyTorch state_dict needs "
                f"only tensors, storages and OrderedDict, and unpickling anything else could run code"
            ) from None

    def load_build(self):
        target = self.stack[-2]
        if not isinstance(target, _BUILDABLE):
            raise UnsafeCheckpointError(f"{self._source}: refusing to set the state of {describe(target)}: a PyTorch "
                                        f"state_dict sets state only on OrderedDict, NumPy arrays and dtypes")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise ValueError(f"{self._source}: a persistent id must describe a storage, got {describe(pid)}")
        return self._load_storage(pid)


def _storage_array(raw: bytes, storage_type: _StorageType, numel: int, big_endian: bool, where: str) -> _Storage:
    dtype = storage_type.dtype.newbyteorder(">") if big_endian else storage_type.dtype
    if not isinstance(numel, int) or len(raw) < numel * dtype.itemsize:
        raise ValueError(f"{where} must hold {numel} elements of {storage_type.name}, got {len(raw)} bytes")
    data = np.frombuffer(raw, dtype=dtype, count=numel).astype(dtype.newbyteorder("="))
    if storage_type.name == "BFloat16Storage":
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return _Storage(data)


def _load_zip(path: Path, archive: zipfile.ZipFile) -> Any:
    names = archive.namelist()
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pickles:
        raise ValueError(f"{path}: a zip-format torch.save file must hold <root>/data.pkl, got entries {names[:8]}")
    root = pickles[0][: -len("data.pkl")]
    big_endian = (root + "byteorder" in names) and archive.read(root + "byteorder").strip() == b"big"
    storages: dict[str, _Storage] = {}

    def load_storage(pid: tuple) -> _Storage:
        _, storage_type, key, _location, numel = pid[:5]
        if key not in storages:
            entry = f"{root}data/{key}"
            if entry not in names:
                raise ValueError(f"{path}: the entry {entry} (a tensor's data) is missing")
            storages[key] = _storage_array(archive.read(entry), storage_type, numel, big_endian, f"{path}:{entry}")
        return storages[key]

    return _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), str(path), load_storage).load()


def _load_legacy(path: Path, f) -> Any:
    """The pre-1.6 format: pickles of the magic number, the protocol, sys_info and the object,
    then the list of storage keys, then per key an int64 element count and the raw elements.

    The object precedes the data it needs, so it is unpickled twice: a first pass that builds no
    tensor and records each storage's type and size, then (data read) the real pass."""
    def small_pickle():
        return _RestrictedUnpickler(f, str(path), _no_storage).load()

    if small_pickle() != _LEGACY_MAGIC:
        raise ValueError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save file)")
    protocol = small_pickle()
    if protocol != _LEGACY_PROTOCOL:
        raise ValueError(f"{path}: legacy torch.save protocol must be {_LEGACY_PROTOCOL}, got {protocol!r}")
    sys_info = small_pickle()
    big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
    found: dict[str, tuple[_StorageType, int]] = {}

    def record(pid: tuple) -> None:
        if len(pid) > 5 and pid[5] is not None:
            raise ValueError(f"{path}: storage views (legacy format) are not supported, got one on storage {pid[2]!r}")
        found.setdefault(pid[2], (pid[1], pid[4]))

    start = f.tell()
    _SkimUnpickler(f, str(path), record).load()
    keys = small_pickle()
    if not isinstance(keys, list):
        raise ValueError(f"{path}: legacy torch.save storage key list must be a list, got {describe(keys)}")
    storages: dict[str, _Storage] = {}
    for key in keys:
        if key not in found:
            raise ValueError(f"{path}: storage {key!r} is listed but no tensor uses it")
        storage_type, numel = found[key]
        header = f.read(8)
        if len(header) != 8:
            raise ValueError(f"{path} is truncated: the data of storage {key!r} is missing")
        count = int.from_bytes(header, "big" if big_endian else "little")
        if count != numel:
            raise ValueError(f"{path}: storage {key!r} must hold {numel} elements, its header says {count}")
        raw = f.read(count * storage_type.dtype.itemsize)
        storages[key] = _storage_array(raw, storage_type, count, big_endian, f"{path}: storage {key!r}")

    def load_storage(pid: tuple) -> _Storage:
        if pid[2] not in storages:
            raise ValueError(f"{path}: the data of storage {pid[2]!r} is missing")
        return storages[pid[2]]

    f.seek(start)
    return _RestrictedUnpickler(f, str(path), load_storage).load()


def _no_storage(pid: tuple):
    raise ValueError(f"a storage must not appear in a legacy header pickle, got {describe(pid)}")


class _SkimUnpickler(_RestrictedUnpickler):
    """The legacy reader's first pass: same allow-list, but tensors are not built (None)."""

    def find_class(self, module: str, name: str):
        found = super().find_class(module, name)
        return _skip if found in (_rebuild_tensor, _rebuild_parameter) else found


def _skip(*args) -> None:
    return None


def read_torch_checkpoint(path) -> Any:
    """The object of a ``torch.save`` file with every tensor as a NumPy array, never running
    pickled code. Raises ``UnsafeCheckpointError`` for a global outside the allow-list and
    ValueError (naming the file) for a truncated, damaged or non-PyTorch file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _load_zip(path, archive)
        with open(path, "rb") as f:
            head = f.read(4)
            if head.startswith(b"PK"):
                raise ValueError(f"{path} is a damaged or truncated zip archive (its central directory is missing)")
            if not head.startswith(b"\x80"):
                raise ValueError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a legacy "
                                 f"torch.save file)")
            f.seek(0)
            return _load_legacy(path, f)
    except UnsafeCheckpointError:
        raise
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path} is a damaged or truncated PyTorch checkpoint: {e}") from e
    except Exception as e:  # whatever a damaged pickle or zip makes the readers raise
        detail = str(e) or "unexpected end of data"
        raise ValueError(f"{path} is a damaged or truncated PyTorch checkpoint: {type(e).__name__}: {detail}") from e


def read_state_dict(path) -> dict[str, np.ndarray]:
    """A state_dict ``{name: array}`` from a ``torch.save`` file: ``torch.save(model.state_dict())``
    (ESPnet2 ``model.pth``, espnet1 ``model.acc.best``) or an espnet1 trainer snapshot (its
    ``"model"`` entry)."""
    obj = read_torch_checkpoint(path)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, np.ndarray)
                                               for k, v in obj.items()):
        raise ValueError(f"{path} must hold a state_dict (a mapping of names to tensors), got {describe(obj)}")
    return dict(obj)
