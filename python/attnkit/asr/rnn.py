"""Recurrent cells and layers with PyTorch's weight layout and gate order: products on
``linear``, cell updates and whole layers on C++ kernels for NumPy arrays, array calls for CuPy.

LSTM gates are (i, f, g, o) and GRU gates (r, z, n), as in ``torch.nn.LSTMCell`` / ``GRUCell``,
so ESPnet's state_dict tensors (``weight_ih [G*H, I]``, ``weight_hh [G*H, H]``, ``bias_ih``,
``bias_hh [G*H]``) are used as they are. Cell shapes: x ``[N, I]``, h and c ``[N, H]``.

``PackedRNN`` is ``torch.nn.LSTM`` / ``torch.nn.GRU`` (batch_first, any number of layers, one or
two directions) run over ``pack_padded_sequence`` input, as ESPnet's encoders run it: every
sequence starts from a zero state at its own first frame (backward direction: at its own last
valid frame), and the output is 0 past each sequence's length.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

from attnkit import _core
from attnkit._arrays import describe, host_float_array, lengths_array
from attnkit._cells import gru_update, lstm_update
from attnkit.asr.params import checked_params, float_dtype
from attnkit._linear import PackedWeight, linear

#: Gates per cell type: G in the ``[G*H, ...]`` weight shapes.
GATES = {"lstm": 4, "gru": 3}


def sigmoid(x: np.ndarray) -> np.ndarray:
    # Written as 0.5 * tanh(x / 2) + 0.5: no overflow warning for large negative x.
    return 0.5 * np.tanh(0.5 * x) + 0.5


def lstm_cell(x, h, c, weight_ih, weight_hh, bias_ih=None, bias_hh=None, gates_x=None):
    """One ``torch.nn.LSTMCell`` step: returns (h', c').

    ``gates_x`` ``[N, 4H]``, if given, replaces ``x weight_ih^T + bias_ih`` (a sequence layer
    computes it for all frames in one product); x is then ignored.
    """
    gates = linear(h, weight_hh, bias_hh)
    gx = linear(x, weight_ih, bias_ih) if gates_x is None else gates_x
    if isinstance(gates, np.ndarray):
        return lstm_update(gates, gx, c)
    return lstm_from_gates(gates + gx, c)


def lstm_from_gates(gates, c, gate_scale=None):
    """The LSTM cell's update from its summed gate pre-activations ``[N, 4H]`` (input and recurrent
    products and both biases): returns (h', c'). For callers that compute the products their own way
    (the decoder does both of its first cell's in one product). NumPy arrays go through the C++
    cell kernel (the encoder's layers use the same code); CuPy arrays through the array calls
    below, given ``gate_scale`` (``lstm_gate_scale``) on their device."""
    if isinstance(gates, np.ndarray):
        return lstm_update(gates, None, c)
    H = c.shape[1]
    # One tanh for all four gates: tanh(x/2) for i, f, o (sigmoid(x) = 0.5 tanh(x/2) + 0.5, the
    # same numbers as ``sigmoid``) and tanh(x) for g.
    t = np.tanh(gates * (lstm_gate_scale(H, gates.dtype) if gate_scale is None else gate_scale))
    s = 0.5 * t + 0.5
    c_new = s[:, H:2 * H] * c + s[:, :H] * t[:, 2 * H:3 * H]
    return s[:, 3 * H:] * np.tanh(c_new), c_new


@functools.lru_cache(maxsize=None)
def lstm_gate_scale(hidden: int, dtype) -> np.ndarray:
    """[4H]: 0.5 on the i, f, o gates, 1 on g."""
    scale = np.full(4 * hidden, 0.5, dtype)
    scale[2 * hidden:3 * hidden] = 1
    scale.flags.writeable = False
    return scale


def gru_cell(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None, gates_x=None):
    """One ``torch.nn.GRUCell`` step: returns h'. ``gates_x`` as in ``lstm_cell`` ``[N, 3H]``."""
    gx = linear(x, weight_ih, bias_ih) if gates_x is None else gates_x
    return gru_from_gates(gx, linear(h, weight_hh, bias_hh), h)


def gru_from_gates(gx, gh, h):
    """The GRU cell's update from its input and recurrent products ``[N, 3H]`` (each with its
    bias): returns h'. NumPy arrays go through the C++ cell kernel, CuPy arrays through the
    array calls below."""
    if isinstance(gh, np.ndarray):
        return gru_update(gh, gx, h)
    H = h.shape[1]
    r = sigmoid(gx[:, :H] + gh[:, :H])
    z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1 - z) * n + z * h


def rnn_type_of(op: str, name: str, value) -> str:
    if value not in GATES:
        raise ValueError(f"{op}: {name} must be one of {sorted(GATES)}, got {describe(value)}")
    return value


def packed_rnn_shapes(input_size: int, hidden_size: int, num_layers: int, bidirectional: bool,
                      rnn_type: str) -> dict[str, tuple[int, ...]]:
    """``torch.nn.LSTM`` / ``GRU`` parameter names and shapes: ``weight_ih_l{k}[_reverse]`` ..."""
    g, directions = GATES[rnn_type] * hidden_size, 2 if bidirectional else 1
    shapes = {}
    for k in range(num_layers):
        inputs = input_size if k == 0 else directions * hidden_size
        for suffix in ("", "_reverse")[:directions]:
            shapes[f"weight_ih_l{k}{suffix}"] = (g, inputs)
            shapes[f"weight_hh_l{k}{suffix}"] = (g, hidden_size)
            shapes[f"bias_ih_l{k}{suffix}"] = (g,)
            shapes[f"bias_hh_l{k}{suffix}"] = (g,)
    return shapes


class PackedRNN:
    """``torch.nn.LSTM`` / ``torch.nn.GRU`` (batch_first) over packed sequences, in NumPy.

    ``params``: torch's names without prefix (``weight_ih_l0``, ``weight_hh_l0_reverse``, ...).
    Call: x ``[B, T, I]``, lengths ``[B]`` (>= 1, any order) -> y ``[B, max(lengths), D*H]``
    with D = 2 for bidirectional ([forward; backward], as torch) and y = 0 past each length.
    Frames past a length are never read, so padding may hold anything (even NaN).
    """

    def __init__(self, params: Mapping[str, Any], *, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, rnn_type: str = "lstm", dtype=np.float32):
        op = type(self).__name__
        self.rnn_type = rnn_type_of(op, "rnn_type", rnn_type)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bidirectional = bool(bidirectional)
        self.dtype = float_dtype(op, dtype)
        self.param_shapes = packed_rnn_shapes(input_size, hidden_size, num_layers, self.bidirectional, rnn_type)
        self.params = checked_params(op, params, self.param_shapes, self.dtype)
        suffixes = ("", "_reverse") if self.bidirectional else ("",)
        # Per layer, the input weights of both directions stacked [D*G*H, I]: one product per layer.
        # Weights packed once for attnkit's linear kernel.
        self._w_ih = [PackedWeight(np.concatenate([self.params[f"weight_ih_l{k}{s}"] for s in suffixes]))
                      for k in range(num_layers)]
        self._w_hh = {f"{k}{s}": PackedWeight(self.params[f"weight_hh_l{k}{s}"])
                      for k in range(num_layers) for s in suffixes}
        self._b_ih = [np.concatenate([self.params[f"bias_ih_l{k}{s}"] for s in suffixes]) for k in range(num_layers)]
        self._suffixes = suffixes

    @property
    def output_size(self) -> int:
        return self.hidden_size * (2 if self.bidirectional else 1)

    def __call__(self, x: np.ndarray, lengths) -> np.ndarray:
        op = type(self).__name__
        x = host_float_array(op, "x", x, (3,))
        B, T, I = x.shape
        if I != self.input_size:
            raise ValueError(f"{op}: x must have shape [B, T, {self.input_size}], got {x.shape}")
        lengths = lengths_array(op, "lengths", lengths, B, T, "T")
        if lengths.min() < 1:
            raise ValueError(f"{op}: lengths must be >= 1 (as pack_padded_sequence), got {lengths.tolist()}")
        T = int(lengths.max())
        # Sorted longest first (pack_padded_sequence's order), the sequences running at frame t
        # are the first active[t] rows, so every step works on a contiguous block h[:k].
        order = np.argsort(-lengths, kind="stable")
        active = (lengths[order][None, :] > np.arange(T)[:, None]).sum(axis=1)
        h = np.ascontiguousarray(x[order, :T].transpose(1, 0, 2), dtype=self.dtype)  # [T, B, I]
        for k in range(self.num_layers):
            gx = linear(h.reshape(T * B, -1), self._w_ih[k], self._b_ih[k]).reshape(T, B, -1)  # [T, B, D*G*H]
            g = gx.shape[2] // len(self._suffixes)
            outs = [self._direction(gx[:, :, d * g:(d + 1) * g], active, k, s) for d, s in enumerate(self._suffixes)]
            h = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=2)
        y = np.empty((B, T, h.shape[2]), self.dtype)
        y[order] = h.transpose(1, 0, 2)
        return y

    def _direction(self, gx: np.ndarray, active: np.ndarray, layer: int, suffix: str) -> np.ndarray:
        """One direction of one layer: gx ``[T, B, G*H]`` (input part of the gates) -> ``[T, B, H]``."""
        T, B, H = gx.shape[0], gx.shape[1], self.hidden_size
        w_hh, b_hh = self._w_hh[f"{layer}{suffix}"], self.params[f"bias_hh_l{layer}{suffix}"]
        out = np.zeros((T, B, H), self.dtype)
        # The whole recurrence in one C++ call (src/cpp/cpu/recurrent.cc), the cells' formulas of
        # lstm_cell / gru_cell; a frame loop of those costs ~30 us of NumPy calls per frame.
        # Backward: a row becomes active at its own last frame, still holding its zero state.
        _core.recurrent_layer(np.ascontiguousarray(gx), w_hh.panels, b_hh, np.ascontiguousarray(active, np.int64),
                              bool(suffix), self.rnn_type, out)
        return out
