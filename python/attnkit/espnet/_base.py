"""Shared machinery of the ESPnet attention family: weights, ``prepare``, outputs, checks.

Contract: /work/shared/spec/espnet_attention.md (sections 1, 1.1, 2, 4). Every class holds its
weights under ESPnet's state_dict names, computes the per-utterance cache once with ``prepare``
(ESPnet's ``pre_compute_enc_h``, made explicit; DESIGN.md principle 7) and then runs ``step``s
that take only what changes: the decoder state and the previous attention state.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, NamedTuple

import numpy as np

from attnkit._arrays import (c_aligned, describe, host_float_array, int_range, is_device_array, lengths_array,
                             positive_scalar)
from attnkit._core import UnsupportedError
from attnkit._linear import PackedWeight, linear
from attnkit.espnet._device import DeviceStep, prepare_on_device, to_device_like
from attnkit.espnet._kernels import fused_additive_step, fused_additive_step_windowed

#: Prefixes under which ESPnet checkpoints store the (first) attention module: espnet1 ``Decoder``
#: (``att.0.``), espnet1 ``E2E`` (``dec.att.0.``, the same tensors registered a second time) and
#: espnet2 ``RNNDecoder`` inside the model (``decoder.att_list.0.``).
ESPNET_PREFIXES = ("decoder.att_list.0.", "dec.att.0.", "att.0.")

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class AttentionOutput(NamedTuple):
    """What ``step`` returns.

    context ``[N, E]``; weights ``[N, T]`` (multi-head ``[N, H, T]``), exactly 0 on padded frames
    except for the Forward family (ESPnet's padding leak); state: the next step's state (its kind
    depends on the class); peak ``[N]`` int64, the argmax frame of the weights (multi-head: of the
    head-averaged weights), for CTC windowing and alignment plots of the decoded hypothesis.
    """

    context: np.ndarray
    weights: np.ndarray
    state: Any
    peak: np.ndarray


class CoverageState(NamedTuple):
    """State of AttCov / AttCovLoc: ``total [N, T]``, the running coverage sum.

    ESPnet keeps the list ``[U, w_0, ..., w_k]`` and sums it every step; the math only needs the
    sum, and adding one ``w`` per step reproduces ``sum(list)`` bit for bit (same order of
    additions). The initial uniform U stays in the sum, as in ESPnet.
    """

    total: np.ndarray


class LocRecState(NamedTuple):
    """State of AttLocRec: weights ``[N, T]`` and the attention LSTM's h, c ``[N, A]``
    (ESPnet's ``(w, (h, c))``)."""

    weights: np.ndarray
    h: np.ndarray
    c: np.ndarray


class ForwardTAState(NamedTuple):
    """State of AttForwardTA: weights ``[N, T]`` and the transition-agent probability u ``[N, 1]``
    (ESPnet keeps u as hidden module state, 0.5 after ``reset()``)."""

    weights: np.ndarray
    u: np.ndarray


@dataclass(frozen=True, eq=False)
class Prepared:
    """The per-utterance cache made by ``prepare``; immutable (frozen, arrays read-only).

    enc ``[B, T, E]`` a copy of the encoder output in the module's dtype (on the GPU when prepare
    got a GPU array: see ``on_device``); lengths int64 ``[B]``;
    keys: the cached projection, ``[B, T, A]`` (ESPnet's ``pre_compute_enc_h``) or ``[B, H, T, A_k]``
    (multi-head ``pre_compute_k``; the dot-product classes keep both as views of storage with the
    frames innermost, the layout of their kernel); values ``[B, H, T, A_v]`` (multi-head ``pre_compute_v``);
    mean ``[B, E]`` (NoAtt's context). Unused fields are None.
    """

    enc: np.ndarray
    lengths: np.ndarray
    keys: np.ndarray | None = None
    values: np.ndarray | None = None
    mean: np.ndarray | None = None
    device_lengths: Any = None
    _weights: Any = field(default=None, repr=False)
    _device_rows: dict = field(default_factory=dict, repr=False)  # row maps uploaded for GPU steps

    @property
    def on_device(self) -> bool:
        """Whether the cache lives on a GPU (``prepare`` got a GPU array; then enc and keys are
        arrays of its library, lengths stays a host array and device_lengths is its device copy)."""
        return self.device_lengths is not None

    @property
    def batch(self) -> int:
        return self.enc.shape[0]

    @property
    def frames(self) -> int:
        return self.enc.shape[1]


def read_only(x: np.ndarray) -> np.ndarray:
    x.flags.writeable = False
    return x


def utterance_lengths(op: str, lengths, B: int, T: int) -> np.ndarray:
    """``prepare``'s lengths: B integers in [1, T] with max(lengths) == T, as int64."""
    lengths = lengths_array(op, "lengths", lengths, B, T, "T")
    if lengths.min() < 1:
        raise ValueError(f"{op}: lengths must be >= 1 (an empty utterance has nothing to attend), "
                         f"got {lengths.tolist()}")
    if lengths.max() != T:
        raise ValueError(f"{op}: lengths must have max(lengths) == T = {T} (as ESPnet, whose mask has "
                         f"width max(lengths)), got max {lengths.max()}")
    return lengths


def uniform_weights(lengths: np.ndarray, frames: int, dtype) -> np.ndarray:
    """U ``[len(lengths), T]``: 1/l on the first l frames, 0 after (ESPnet's initial state)."""
    dtype = np.dtype(dtype)
    valid = (np.arange(frames)[None, :] < lengths[:, None]).astype(dtype)
    return valid / lengths.astype(dtype)[:, None]


def one_hot_first(n: int, frames: int, dtype) -> np.ndarray:
    """The Forward family's initial state ``[N, T]``: 1 on frame 0."""
    a = np.zeros((n, frames), dtype=dtype)
    a[:, 0] = 1
    return a


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def peak_of(weights: np.ndarray) -> np.ndarray:
    if weights.ndim == 3:
        weights = weights.mean(axis=1)
    return weights.argmax(axis=-1).astype(np.int64, copy=False)


def _positive_int(op: str, name: str, value, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an integer, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{op}: {name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_array(op: str, name: str, x, shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
    """x must be a NumPy array of exactly ``shape`` and ``dtype``; ``what`` names the layout."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{op}: {name} must be a numpy.ndarray {what}, got {describe(x)}")
    if x.shape != shape:
        raise ValueError(f"{op}: {name} must have shape {shape} {what}, got {x.shape}")
    if x.dtype != dtype:
        raise TypeError(f"{op}: {name} must have dtype {dtype} (the module's dtype), got {x.dtype}")
    return x


def window_bounds(op: str, last_attended_idx, backward_window, forward_window, row_lengths: np.ndarray,
                  frames: int) -> np.ndarray | None:
    """ESPnet's attention window (Deep Voice 3 constraint) as per-row frame ranges ``[N, 2]``.

    With lo = idx - backward_window and hi = idx + forward_window, ESPnet cuts frames < lo only if
    lo > 0 and frames >= hi only if hi < T, so the surviving frames are [max(lo, 0), min(hi, T)).
    An int ``last_attended_idx`` needs N = 1, as in ESPnet (UnsupportedError, a
    NotImplementedError, otherwise); an int array ``[N]`` gives each row its own window (attnkit's
    generalisation). The returned ranges are also clipped to each row's length; a window with no
    valid frame is a ValueError (ESPnet would return NaN weights).
    """
    if last_attended_idx is None:
        return None
    bw = _positive_int(op, "backward_window", backward_window, 0)
    fw = _positive_int(op, "forward_window", forward_window, 0)
    n = row_lengths.shape[0]
    if isinstance(last_attended_idx, numbers.Integral) and not isinstance(last_attended_idx, (bool, np.bool_)):
        if n != 1:
            raise UnsupportedError(
                f"{op}: last_attended_idx as an int needs a single row (ESPnet: batch attention "
                f"constraining is not supported); pass an int array of shape ({n},) for per-row "
                f"windows, got {n} rows"
            )
        idx = np.array([int(last_attended_idx)], np.int64)
    else:
        idx = np.asarray(last_attended_idx)
        if idx.dtype.kind not in "iu" or idx.shape != (n,):
            raise TypeError(f"{op}: last_attended_idx must be an int or an int array of shape ({n},), "
                            f"got {describe(last_attended_idx)}")
        idx = idx.astype(np.int64)
    if idx.min() < 0:
        raise ValueError(f"{op}: last_attended_idx must be >= 0, got {idx.min()}")
    lo = np.maximum(idx - bw, 0)
    hi = np.minimum(np.minimum(idx + fw, frames), row_lengths)
    bad = np.flatnonzero(hi <= lo)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{op}: last_attended_idx must leave a valid frame in the window, got idx {int(idx[i])} "
            f"(window [{int(idx[i]) - bw}, {int(idx[i]) + fw})) for row {i} of length {int(row_lengths[i])}"
        )
    return np.stack([lo, hi], axis=1)


class EspnetAttention:
    """Base of the 15 ESPnet RNN attention classes (attnkit's own API, not ESPnet's).

    Subclasses declare their parameter shapes; this class holds the weights (ESPnet state_dict
    names, without prefix, in the module's dtype), loads and checks them, and implements
    ``prepare``. ``step`` is per class.
    """

    espnet_name: ClassVar[str]
    #: ESPnet's default ``scaling`` (None: the class has no scaling or uses 1/sqrt(A_k)).
    default_scaling: ClassVar[float | None] = 2.0
    #: ESPnet's state kind (spec 1.1): tensor_bt, window_bwt, coverage_list, w_hc or heads_list.
    state_kind: ClassVar[str] = "tensor_bt"

    eprojs: int | None = None
    dunits: int | None = None

    def _setup(self, shapes: dict[str, tuple[int, ...]], dtype, params, seed) -> None:
        dtype = np.dtype(dtype)
        if dtype not in _DTYPES:
            raise TypeError(f"{type(self).__name__}: dtype must be float32 or float64, got {dtype}")
        self._dtype = dtype
        self._shapes = dict(shapes)
        if params is not None:
            self.load_state_dict(params)
        else:
            self._init_params(seed)

    def _dims(self, **dims) -> dict[str, int]:
        return {k: _positive_int(type(self).__name__, k, v, 0 if k == "aconv_filts" else 1) for k, v in dims.items()}

    # -- weights -----------------------------------------------------------------------------------

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """ESPnet state_dict names (without prefix) and shapes of this module's parameters."""
        return dict(self._shapes)

    @property
    def params(self) -> Mapping[str, np.ndarray]:
        """The weights, read-only."""
        return self._params

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of the weights under ESPnet's names (no prefix)."""
        return {k: v.copy() for k, v in self._params.items()}

    def _init_params(self, seed) -> None:
        """ESPnet's ``init_like_chainer``: 1-D tensors 0, others ~ N(0, 1/fan_in)."""
        rng = np.random.default_rng(seed)
        out = {}
        for name, shape in self._shapes.items():
            if len(shape) == 1:
                out[name] = np.zeros(shape, self._dtype)
            else:
                out[name] = (rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))).astype(self._dtype)
        self._params = MappingProxyType({k: read_only(v) for k, v in out.items()})

    def load_state_dict(self, state_dict: Mapping[str, Any], *, prefix: str | None = None) -> None:
        """Loads weights by ESPnet's state_dict names.

        Keys may carry one of the prefixes ``att.0.``, ``dec.att.0.`` or ``decoder.att_list.0.``
        (an espnet1 E2E checkpoint holds both of the first two, with equal tensors: that is
        accepted). With ``prefix``, only keys starting with it are read (the rest, e.g. the
        encoder's, are ignored). Values: anything ``np.asarray`` takes (NumPy arrays, CPU torch
        tensors), cast to the module's dtype. Missing, unexpected or wrongly shaped entries raise
        a ValueError naming the parameter (and both shapes); existing ``Prepared`` objects become
        invalid.
        """
        op = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{op}: state_dict must be a mapping of names to arrays, got {describe(state_dict)}")
        found: dict[str, tuple[str, np.ndarray]] = {}
        for key, value in state_dict.items():
            if not isinstance(key, str):
                raise TypeError(f"{op}: state_dict keys must be str, got {describe(key)}")
            if prefix is not None:
                if not key.startswith(prefix):
                    continue
                name = key[len(prefix):]
            else:
                name = next((key[len(p):] for p in ESPNET_PREFIXES if key.startswith(p)), key)
            arr = np.asarray(value)
            if name in found:
                if not (found[name][1].shape == arr.shape and np.array_equal(found[name][1], arr)):
                    raise ValueError(f"{op}: state_dict must hold one value per parameter, got two different "
                                     f"values for {name!r} (keys {found[name][0]!r} and {key!r})")
                continue
            found[name] = (key, arr)
        unexpected = sorted(k for n, (k, _) in found.items() if n not in self._shapes)
        if unexpected:
            raise ValueError(f"{op}: state_dict must hold only {type(self).__name__}'s parameters "
                             f"{sorted(self._shapes)}, got unexpected key(s) {unexpected}")
        missing = sorted(n for n in self._shapes if n not in found)
        if missing:
            raise ValueError(f"{op}: state_dict must hold every parameter, got none for {missing}")
        params = {}
        for name, shape in self._shapes.items():
            key, arr = found[name]
            if arr.dtype.kind != "f":
                raise TypeError(f"{op}: parameter {name!r} must be a float array, got {describe(arr)}")
            if arr.shape != shape:
                raise ValueError(f"{op}: parameter {name!r} must have shape {shape}, got {arr.shape} (key {key!r})")
            params[name] = read_only(np.array(arr, dtype=self._dtype))
        # A new mapping object: Prepared objects made with the old weights are detected by identity.
        self._params = MappingProxyType(params)

    def _p(self, name: str) -> np.ndarray:
        return self._params[name]

    def _packed(self, name: str) -> PackedWeight:
        """Weight ``name`` packed for ``linear`` (once per set of weights: the cache goes with
        the ``_params`` mapping, which loading replaces)."""
        cache = self.__dict__.get("_packed_cache")
        if cache is None or cache[0] is not self._params:
            cache = self._packed_cache = (self._params, {})
        if name not in cache[1]:
            cache[1][name] = PackedWeight(self._params[name])
        return cache[1][name]

    # -- prepare -----------------------------------------------------------------------------------

    def prepare(self, enc, lengths) -> Prepared:
        """Computes the per-utterance cache once (ESPnet's ``pre_compute_enc_h`` / per-head K, V).

        enc ``[B, T, E]`` in the module's dtype (padded frames may hold anything, even NaN);
        lengths ``[B]`` integers in [1, T] with max(lengths) == T, as ESPnet requires.
        """
        op = f"{type(self).__name__}.prepare"
        if is_device_array(enc):
            return prepare_on_device(self, op, enc, lengths, Prepared)
        enc = host_float_array(op, "enc", enc, (3,))
        if enc.dtype != self._dtype:
            raise TypeError(f"{op}: enc must have dtype {self._dtype} (the module's dtype), got {enc.dtype}")
        B, T, E = enc.shape
        if self.eprojs is not None and E != self.eprojs:
            raise ValueError(f"{op}: enc must be [B, T, E] with E = eprojs = {self.eprojs}, got shape {enc.shape}")
        lengths = utterance_lengths(op, lengths, B, T)
        enc = read_only(np.array(enc, order="C"))
        cache = {k: read_only(v) for k, v in self._precompute(enc, lengths).items()}
        return Prepared(enc=enc, lengths=read_only(lengths.copy()), _weights=self._params, **cache)

    def _precompute(self, enc: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        """``keys = enc W_enc^T + b_enc`` ``[B, T, A]`` (most classes)."""
        return {"keys": linear(enc, self._packed("mlp_enc.weight"), self._p("mlp_enc.bias"))}

    # -- step helpers ------------------------------------------------------------------------------

    def _begin(self, op: str, prepared, dec_z, rows) -> tuple[Prepared, np.ndarray, np.ndarray | None]:
        """Checks prepared, rows and dec_z; returns (prepared, rows int64 [N], dec_z [N, Dz])."""
        rows = self._prepared_rows(op, prepared, rows)
        if self.dunits is None:
            return prepared, rows, None
        n = rows.shape[0]
        if dec_z is None:
            return prepared, rows, np.zeros((n, self.dunits), self._dtype)
        dec_z = host_float_array(op, "dec_z", dec_z, (2,))
        if dec_z.shape != (n, self.dunits):
            raise ValueError(f"{op}: dec_z must have shape ({n}, {self.dunits}) ([N, dunits]), got {dec_z.shape}")
        if dec_z.dtype != self._dtype:
            raise TypeError(f"{op}: dec_z must have dtype {self._dtype} (the module's dtype), got {dec_z.dtype}")
        return prepared, rows, dec_z

    def _prepared_rows(self, op: str, prepared, rows) -> np.ndarray:
        """Checks prepared and rows; returns rows int64 [N]."""
        if not isinstance(prepared, Prepared):
            raise TypeError(f"{op}: prepared must be the Prepared returned by prepare(), got {describe(prepared)}")
        if prepared._weights is not self._params:
            raise ValueError(f"{op}: prepared must come from this module's prepare() with its current weights, "
                             f"got one made by another module or before load_state_dict(); call prepare() again")
        return self._rows(op, rows, prepared.batch)

    @staticmethod
    def _rows(op: str, rows, batch: int) -> np.ndarray:
        if rows is None:
            return np.arange(batch, dtype=np.int64)
        arr = np.asarray(rows)
        if arr.dtype.kind not in "iu" or arr.ndim != 1 or arr.shape[0] == 0:
            raise TypeError(f"{op}: rows must be a non-empty 1-D integer array [N], got {describe(rows)}")
        arr = c_aligned(arr.astype(np.int64, copy=False))  # as the kernels read it
        lo, hi = int_range(arr)
        if lo < 0 or hi >= batch:
            raise ValueError(f"{op}: rows must lie in [0, B={batch}), got min {lo} and max {hi}")
        return arr

    def _scaling(self, op: str, scaling) -> float:
        return positive_scalar(op, "scaling", scaling)

    def _uniform(self, prepared: Prepared, rows: np.ndarray) -> np.ndarray:
        u = uniform_weights(prepared.lengths[rows], prepared.frames, self._dtype)
        return to_device_like(prepared.enc, u) if prepared.on_device else u

    def _begin_device(self, op: str, prepared: Prepared, dec_z, rows) -> DeviceStep:
        """``_begin`` for a prepared cache on the GPU: the same checks, then the GPU step's own."""
        return DeviceStep(self, op, prepared, dec_z, self._prepared_rows(op, prepared, rows))

    def _bt_state(self, op: str, state, prepared: Prepared, rows: np.ndarray, init) -> np.ndarray:
        """A ``[N, T]`` weights state, or ``init()`` when state is None."""
        if state is None:
            return init()
        return check_array(op, "state", state, (rows.shape[0], prepared.frames), self._dtype,
                           "([N, T] previous attention weights)")

    def initial_state(self, prepared: Prepared, rows=None):
        """The state that ``state=None`` stands for in ``step`` (ESPnet's initialisation, in the
        module's dtype)."""
        op = f"{type(self).__name__}.initial_state"
        prepared, rows, _ = self._begin(op, prepared, None, rows)
        return self._initial(prepared, rows)

    def _initial(self, prepared: Prepared, rows: np.ndarray):
        return self._uniform(prepared, rows)

    def __repr__(self) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in self._repr_dims().items())
        return f"attnkit.espnet.{type(self).__name__}({dims}, dtype={self._dtype.name})"

    def _repr_dims(self) -> dict[str, Any]:
        return {}


class EncoderProjection(EspnetAttention):
    """The single-head classes with ``mlp_enc`` / ``mlp_dec`` and an additive energy MLP."""

    def _initial(self, prepared, rows):
        return None  # AttDot and AttAdd ignore the state; the others override this

    def _query(self, dec_z: np.ndarray) -> np.ndarray:
        """q = dec_z W_dec^T ``[N, A]`` (mlp_dec has no bias, except in AttDot)."""
        return linear(dec_z, self._packed("mlp_dec.weight"))

    def _loc_conv(self) -> np.ndarray:
        """loc_conv.weight ``[C, 1, R, K]`` as the kernel's ``[C, R, K]``."""
        return self._p("loc_conv.weight")[:, 0]

    def _additive(self, prepared: Prepared, rows, q, att_in, conv_w, conv_proj, loc_bias, scaling,
                  values: np.ndarray | None = None, bounds: np.ndarray | None = None):
        """Runs the fused kernel (or its windowed form); returns (context [N, Ev], weights [N, T])."""
        values = prepared.enc if values is None else values
        if att_in is not None:
            att_in = c_aligned(att_in)  # the caller's state may be any view
        n = rows.shape[0]
        ctx = np.empty((n, values.shape[2]), self._dtype)
        w = np.empty((n, prepared.frames), self._dtype)
        gvec = self._p("gvec.weight")[0]
        if bounds is None:
            fused_additive_step(prepared.keys, values, prepared.lengths, rows, q, att_in, conv_w, conv_proj,
                                loc_bias, gvec, scaling, ctx, w)
        else:
            fused_additive_step_windowed(prepared.keys, values, prepared.lengths, rows, q, att_in, conv_w,
                                         conv_proj, gvec, scaling, bounds, ctx, w)
        return ctx, w

    def _repr_dims(self) -> dict[str, Any]:
        return {"eprojs": self.eprojs, "dunits": self.dunits, "att_dim": self.att_dim}
