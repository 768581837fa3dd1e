"""ESPnet's convolutional front ends of the encoder, in NumPy: ``Conv2dSubsampling`` and ``VGG2L``.

Feature maps are kept channels-last, ``[B, T, F, C]``, so that each convolution is one im2col copy
and one matrix product whose output is already in the next layer's layout; ESPnet's final
flattening (``x.transpose(1, 2).reshape(b, t, c * f)``, channel-major) is done once at the end.

Batches follow the per-utterance semantics of ESPnet's inference (every utterance computed as if
it were alone): frames past an utterance's length never reach its valid outputs, so padding may
hold anything. For ``Conv2dSubsampling`` this is also what ESPnet's padded batch computes; for
``VGG2L`` (3x3 convolutions with padding 1, ceil-mode pooling) ESPnet's padded batch lets the
last frames of a shorter utterance see its neighbours' zero padding through the bias, so there
the two differ near the end of the shorter utterances.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from attnkit.asr.params import checked_params, float_dtype, padded_batch
from attnkit._linear import PackedWeight, linear

# im2col copies are made in pieces of at most this many elements (64 MB in float32), so a long
# utterance through VGG2L (T x 80 x 576 columns for conv1_2) does not need gigabytes.
_IM2COL_ELEMENTS = 1 << 24


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int, padding: int,
           packed: PackedWeight | None = None) -> np.ndarray:
    """``torch.nn.Conv2d`` on channels-last maps: x ``[B, T, F, Cin]``, weight ``[Cout, Cin, K, K]``
    (torch's layout), bias ``[Cout]`` -> ``[B, T', F', Cout]`` with T' = (T + 2p - K) // s + 1.

    y[b,t,f,o] = bias[o] + sum_{c,i,j} weight[o,c,i,j] * xpad[b, s*t+i, s*f+j, c] (zero padding p):
    an im2col copy ``[rows, K*K*Cin]`` (ordered i, j, c, as ``conv_weight``) and one GEMM.
    ``packed``: the weight as ``conv_weight(weight)`` made it once (the layers keep it).
    """
    cout, cin, k, _ = weight.shape
    if padding:
        x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    B, T, F, _ = x.shape
    t_out, f_out = (T - k) // stride + 1, (F - k) // stride + 1
    w = conv_weight(weight) if packed is None else packed
    y = np.empty((B, t_out, f_out, cout), x.dtype)
    step = max(1, _IM2COL_ELEMENTS // max(1, f_out * cin * k * k))
    for b in range(B):
        for t0 in range(0, t_out, step):
            n = min(step, t_out - t0)
            # One strided copy per tap (i, j), Cin contiguous: copying the [T', F', Cin, K, K]
            # window view at once ran element by element (~10% of a batched beam search's time).
            cols = np.empty((n, f_out, k, k, cin), x.dtype)
            for i in range(k):
                rows = x[b, stride * t0 + i: stride * (t0 + n - 1) + i + 1: stride]
                for j in range(k):
                    cols[:, :, i, j] = rows[:, j: stride * (f_out - 1) + j + 1: stride]
            y[b, t0:t0 + n] = linear(cols.reshape(n * f_out, k * k * cin), w).reshape(n, f_out, cout)
    if bias is not None:
        y += bias
    return y


def conv_weight(weight: np.ndarray) -> PackedWeight:
    """A ``[Cout, Cin, K, K]`` convolution weight as the ``[Cout, K*K*Cin]`` GEMM weight (columns
    ordered i, j, c, as ``conv2d``'s im2col), packed."""
    return PackedWeight(np.ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(weight.shape[0], -1))


def channel_major(x: np.ndarray) -> np.ndarray:
    """``[B, T, F, C]`` -> ``[B, T, C*F]`` with feature index c*F + f, as ESPnet's
    ``x.transpose(1, 2).reshape(b, t, c * f)`` of a ``[b, c, t, f]`` map."""
    B, T, F, C = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 3, 2)).reshape(B, T, C * F)


def zero_past(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """x ``[B, T, ...]`` with frames t >= lengths[b] set to 0 (in place; NaN-safe)."""
    x[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = 0
    return x


def ceil_half(n):
    """ceil(n / 2) for ints and int arrays."""
    return -(-n // 2)


def positional_encoding(frames: int, size: int) -> np.ndarray:
    """ESPnet's sinusoidal table ``pe [T, D]``: pe[t, 2i] = sin(t w_i), pe[t, 2i+1] = cos(t w_i),
    w_i = exp(-2i ln(10000) / D). Float32, as ESPnet builds it whatever the model's dtype."""
    position = np.arange(frames, dtype=np.float32)[:, None]
    div_term = np.exp(np.arange(0, size, 2, dtype=np.float32) * np.float32(-(math.log(10000.0) / size)))
    angle = (position * div_term).astype(np.float64)  # [T, ceil(D/2)], float32 products
    pe = np.zeros((frames, size), np.float32)
    pe[:, 0::2] = np.sin(angle)  # rounded once to float32 (torch's float32 sin may be 1 ulp off)
    pe[:, 1::2] = np.cos(angle[:, : size // 2])
    return pe



class Conv2dSubsampling:
    """ESPnet's ``Conv2dSubsampling`` (espnet/nets/pytorch_backend/transformer/subsampling.py).

    Conv2d(1, C, 3, stride 2), ReLU, Conv2d(C, C, 3, stride 2), ReLU, flatten channel-major, Linear
    to U, then (``positional_encoding=True``) ESPnet's ``PositionalEncoding``: y * sqrt(U) + pe.
    ESPnet uses C = U; attnkit allows ``channels`` != ``units`` (the demo model: 32 and 128).
    Parameters: ``conv.0.weight [C, 1, 3, 3]``, ``conv.0.bias``, ``conv.2.weight [C, C, 3, 3]``,
    ``conv.2.bias``, ``out.0.weight [U, C * F'']``, ``out.0.bias`` with F'' = ((F - 1)//2 - 1)//2.
    Call: x ``[B, T, F]``, lengths ``[B]`` or None -> (y ``[B, T'', U]``, lengths'') with
    L'' = ((L - 1)//2 - 1)//2 (ESPnet's mask subsampling of a length-L utterance); every length
    must give L'' >= 1, i.e. L >= 7 (ESPnet's TooShortUttError). Output frames past L'' are 0.
    """

    def __init__(self, params: Mapping[str, Any], *, idim: int, channels: int, units: int,
                 positional_encoding: bool, dtype=np.float32):
        op = type(self).__name__
        self.idim, self.channels, self.units = idim, channels, units
        self.positional_encoding = bool(positional_encoding)
        self.dtype = float_dtype(op, dtype)
        if self.reduce(idim) < 1:
            raise ValueError(f"{op}: idim must be >= 7 (two 3x3 convolutions with stride 2), got {idim}")
        self.param_shapes = self.shapes(idim, channels, units)
        self.params = checked_params(op, params, self.param_shapes, self.dtype)
        self._w_out = PackedWeight(self.params["out.0.weight"])
        self._w_conv = {name: conv_weight(self.params[f"{name}.weight"]) for name in ("conv.0", "conv.2")}

    @staticmethod
    def reduce(n):
        """The size after both convolutions: ((n - 1)//2 - 1)//2 (works on ints and arrays)."""
        return ((n - 1) // 2 - 1) // 2

    @classmethod
    def shapes(cls, idim: int, channels: int, units: int) -> dict[str, tuple[int, ...]]:
        return {"conv.0.weight": (channels, 1, 3, 3), "conv.0.bias": (channels,),
                "conv.2.weight": (channels, channels, 3, 3), "conv.2.bias": (channels,),
                "out.0.weight": (units, channels * cls.reduce(idim)), "out.0.bias": (units,)}

    def __call__(self, x: np.ndarray, lengths=None) -> tuple[np.ndarray, np.ndarray]:
        op = type(self).__name__
        x, lengths = padded_batch(op, x, lengths, self.idim)
        out_lengths = self.reduce(lengths)
        if out_lengths.min() < 1:
            raise ValueError(f"{op}: lengths must be >= 7 (shorter input leaves no frame after 4x "
                             f"subsampling), got {lengths.tolist()}")
        p = self.params
        h = zero_past(x.astype(self.dtype)[..., None], lengths)  # [B, T, F, 1]
        h = np.maximum(conv2d(h, p["conv.0.weight"], p["conv.0.bias"], 2, 0, self._w_conv["conv.0"]), 0)
        h = np.maximum(conv2d(h, p["conv.2.weight"], p["conv.2.bias"], 2, 0, self._w_conv["conv.2"]), 0)
        h = h[:, : int(out_lengths.max())]
        y = linear(channel_major(h), self._w_out, p["out.0.bias"])
        if self.positional_encoding:
            pe = positional_encoding(y.shape[1], self.units).astype(self.dtype)
            y = y * self.dtype.type(math.sqrt(self.units)) + pe
        return zero_past(y, out_lengths), out_lengths


class VGG2L:
    """ESPnet's ``VGG2L`` (espnet/nets/pytorch_backend/rnn/encoders.py).

    The input ``[B, T, D]`` is read as ``in_channel`` maps of D / in_channel features (ESPnet's
    ``view(B, T, C, D // C).transpose(1, 2)``); then conv1_1 (C -> 64), ReLU, conv1_2 (64 -> 64),
    ReLU, 2x2 max-pool (stride 2, ceil mode), conv2_1 (64 -> 128), ReLU, conv2_2 (128 -> 128),
    ReLU, max-pool; all convolutions 3x3 with padding 1. Output ``[B, ceil(ceil(T/2)/2),
    128 * ceil(ceil(F/2)/2)]`` flattened channel-major, lengths ceil(ceil(L/2)/2) (ESPnet's rule).
    Parameters: ``conv1_1.weight [64, C, 3, 3]``, ``conv1_1.bias`` ... ``conv2_2.bias [128]``.
    Each utterance is computed as if alone (see the module docstring); output frames past its
    length are 0.
    """

    def __init__(self, params: Mapping[str, Any], *, idim: int, in_channel: int = 1, dtype=np.float32):
        op = type(self).__name__
        if idim % in_channel:
            raise ValueError(f"{op}: idim must be a multiple of in_channel = {in_channel}, got {idim}")
        self.idim, self.in_channel = idim, in_channel
        self.dtype = float_dtype(op, dtype)
        self.param_shapes = self.shapes(in_channel)
        self.params = checked_params(op, params, self.param_shapes, self.dtype)
        self._w_conv = {name: conv_weight(self.params[f"{name}.weight"])
                        for name in ("conv1_1", "conv1_2", "conv2_1", "conv2_2")}

    @staticmethod
    def shapes(in_channel: int) -> dict[str, tuple[int, ...]]:
        chans = {"conv1_1": (64, in_channel), "conv1_2": (64, 64), "conv2_1": (128, 64), "conv2_2": (128, 128)}
        shapes = {}
        for name, (cout, cin) in chans.items():
            shapes[f"{name}.weight"] = (cout, cin, 3, 3)
            shapes[f"{name}.bias"] = (cout,)
        return shapes

    @staticmethod
    def output_size(idim: int, in_channel: int = 1) -> int:
        """ESPnet's ``get_vgg2l_odim``: 128 * ceil(ceil(idim / in_channel / 2) / 2)."""
        return 128 * ceil_half(ceil_half(idim // in_channel))

    def __call__(self, x: np.ndarray, lengths=None) -> tuple[np.ndarray, np.ndarray]:
        op = type(self).__name__
        x, lengths = padded_batch(op, x, lengths, self.idim)
        B, T, D = x.shape
        c = self.in_channel
        h = x.astype(self.dtype).reshape(B, T, c, D // c).transpose(0, 1, 3, 2)  # [B, T, F, C]
        for block in ("conv1", "conv2"):
            for layer in ("_1", "_2"):
                # Zeroing the frames past each length before every convolution is what the
                # utterance alone would see: its zero padding.
                h = zero_past(np.ascontiguousarray(h), lengths)
                w, b = self.params[f"{block}{layer}.weight"], self.params[f"{block}{layer}.bias"]
                h = np.maximum(conv2d(h, w, b, 1, 1, self._w_conv[block + layer]), 0)
            h = self._max_pool(zero_past(h, lengths))
            lengths = ceil_half(lengths)
        return zero_past(channel_major(h), lengths), lengths

    @staticmethod
    def _max_pool(h: np.ndarray) -> np.ndarray:
        """2x2 max-pool, stride 2, ceil mode on ``[B, T, F, C]``. The inputs are ReLU outputs
        (>= 0) with padding zeroed, so padding an odd edge with 0 gives torch's ceil-mode result
        (whose last window covers only the frames that exist)."""
        B, T, F, C = h.shape
        h = np.pad(h, ((0, 0), (0, T % 2), (0, F % 2), (0, 0)))
        return h.reshape(B, (T + 1) // 2, 2, (F + 1) // 2, 2, C).max(axis=(2, 4))
