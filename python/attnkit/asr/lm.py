"""ESPnet's espnet1 RNN language model for shallow fusion, on NumPy.

``espnet/nets/pytorch_backend/lm/default.py``: ``RNNLM`` (embedding, stacked LSTM/GRU cells, linear
output ``lo``) inside ``ClassifierWithState``, whose ``predict`` returns log_softmax(lo(h_top)).
Dropout is identity at inference. state_dict names: ``predictor.embed.weight [V, De]``,
``predictor.rnn.{l}.weight_ih|weight_hh|bias_ih|bias_hh`` (PyTorch gate order),
``predictor.lo.weight [V, U]``, ``predictor.lo.bias [V]``.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from attnkit._arrays import describe
from attnkit.asr._rows import row_index, select_rows
from attnkit.asr.decoder import log_softmax
from attnkit.asr.rnn import gru_cell, lstm_cell
from attnkit._linear import PackedWeight, linear

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class LMState(NamedTuple):
    """Per layer h ``[N, U]`` and, for LSTM, c ``[N, U]`` (None for GRU)."""

    h: tuple[np.ndarray, ...]
    c: tuple[np.ndarray, ...] | None


class RNNLM:
    """ESPnet's ``ClassifierWithState(RNNLM(...))`` for decoding: ``predict``, ``buff_predict``,
    ``final`` and ``select``, batched over N rows. ``state=None`` means zeros (ESPnet's start).

    ``params``: the predictor's names (``embed.weight``, ``rnn.{l}.*``, ``lo.weight``,
    ``lo.bias``); sizes and the cell type (G = 4 LSTM, 3 GRU) are read off the weights.
    """

    def __init__(self, params: Mapping[str, Any], *, dtype=np.float32):
        op = "RNNLM"
        dtype = np.dtype(dtype)
        if dtype not in _DTYPES:
            raise TypeError(f"{op}: dtype must be float32 or float64, got {dtype}")
        if not isinstance(params, Mapping):
            raise TypeError(f"{op}: params must be a mapping of ESPnet names to arrays, got {describe(params)}")
        self.dtype = dtype
        p = {k: np.asarray(v) for k, v in params.items()}
        for need in ("embed.weight", "rnn.0.weight_hh", "lo.weight", "lo.bias"):
            if need not in p:
                raise ValueError(f"{op}: params must hold {need!r}, got keys {sorted(p)}")
        V, De = p["embed.weight"].shape
        G, U = p["rnn.0.weight_hh"].shape
        if G not in (4 * U, 3 * U):
            raise ValueError(f"{op}: parameter 'rnn.0.weight_hh' must have shape (4U, U) (LSTM) or (3U, U) (GRU), "
                             f"got {(G, U)}")
        self.rnn_type = "lstm" if G == 4 * U else "gru"
        self.vocab_size, self.n_units = V, U
        self.n_layers = sum(1 for k in p if k.startswith("rnn.") and k.endswith(".weight_ih"))
        expected = {"embed.weight": (V, De), "lo.weight": (V, U), "lo.bias": (V,)}
        for layer in range(self.n_layers):
            expected.update({f"rnn.{layer}.weight_ih": (G, De if layer == 0 else U), f"rnn.{layer}.weight_hh": (G, U),
                             f"rnn.{layer}.bias_ih": (G,), f"rnn.{layer}.bias_hh": (G,)})
        for name, shape in expected.items():
            if name not in p:
                raise ValueError(f"{op}: params must hold {name!r} (shape {shape}), got none")
            if p[name].shape != shape:
                raise ValueError(f"{op}: parameter {name!r} must have shape {shape}, got {p[name].shape}")
        unexpected = sorted(set(p) - set(expected))
        if unexpected:
            raise ValueError(f"{op}: params must hold only the RNNLM's parameters, got unexpected key(s) {unexpected}")
        w = {k: np.array(p[k], dtype=dtype) for k in expected}
        # Layer 0's input gates tabulated per token [V, G]: the embedding costs a row gather.
        self._token_gates = w["embed.weight"] @ w["rnn.0.weight_ih"].T + w["rnn.0.bias_ih"]
        # The step's products run on weights packed once for attnkit's linear kernel.
        self._cells = [{"weight_ih": PackedWeight(w[f"rnn.{layer}.weight_ih"]),
                        "weight_hh": PackedWeight(w[f"rnn.{layer}.weight_hh"]),
                        "bias_ih": w[f"rnn.{layer}.bias_ih"], "bias_hh": w[f"rnn.{layer}.bias_hh"]}
                       for layer in range(self.n_layers)]
        self._lo_w, self._lo_b = PackedWeight(w["lo.weight"]), w["lo.bias"]

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], *, prefix: str = "predictor.", dtype=np.float32) -> "RNNLM":
        """From an espnet1 LM checkpoint's state_dict (keys ``predictor.*``)."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"RNNLM.from_state_dict: state_dict must be a mapping, got {describe(state_dict)}")
        return cls({k[len(prefix):]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith(prefix)},
                   dtype=dtype)

    def __repr__(self) -> str:
        return (f"attnkit.asr.RNNLM(vocab_size={self.vocab_size}, n_layers={self.n_layers}, n_units={self.n_units}, "
                f"rnn_type={self.rnn_type!r}, dtype={self.dtype.name})")

    def on_device(self, like):
        """This LM on the GPU that holds CuPy array ``like``: an ``attnkit.asr.device.DeviceLM``
        with the weights copied there, made once per device (the GPU batched search uses it)."""
        from attnkit.asr import device  # it builds on this module

        return device.on_device(self, like)

    def zero_state(self, n: int) -> LMState:
        h = tuple(np.zeros((n, self.n_units), self.dtype) for _ in range(self.n_layers))
        c = tuple(z.copy() for z in h) if self.rnn_type == "lstm" else None
        return LMState(h, c)

    def predict(self, state: LMState | None, y) -> tuple[LMState, np.ndarray]:
        """One step for tokens y ``[N]``: returns (new state, log p(next | prefix) ``[N, V]``)."""
        op = "RNNLM.predict"
        y = np.asarray(y)
        if y.dtype.kind not in "iu" or y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= self.vocab_size)):
            raise ValueError(f"{op}: y must be a 1-D integer array of tokens in [0, {self.vocab_size}), "
                             f"got {describe(y)}")
        if state is None:
            state = self.zero_state(y.shape[0])
        elif not isinstance(state, LMState) or state.h[0].shape[0] != y.shape[0]:
            raise TypeError(f"{op}: state must be None or an LMState of {y.shape[0]} rows, got {describe(state)}")
        h, c = [], []
        x, gates = None, self._token_gates[y]
        for layer, p in enumerate(self._cells):
            gx = gates if layer == 0 else None
            if self.rnn_type == "lstm":
                hl, cl = lstm_cell(x, state.h[layer], state.c[layer], p["weight_ih"], p["weight_hh"], p["bias_ih"],
                                   p["bias_hh"], gates_x=gx)
                c.append(cl)
            else:
                hl = gru_cell(x, state.h[layer], p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], gates_x=gx)
            h.append(hl)
            x = hl
        new = LMState(tuple(h), tuple(c) if self.rnn_type == "lstm" else None)
        return new, log_softmax(linear(x, self._lo_w, self._lo_b))

    def buff_predict(self, state: LMState | None, y, n: int) -> tuple[LMState, np.ndarray]:
        """ESPnet's batched predict (for ``RNNLM`` it is ``predict``)."""
        return self.predict(state, y)

    def final(self, state: LMState | None, index: int | None = None) -> float:
        """The end-of-sentence score ESPnet adds at the end: 0 for ``RNNLM`` (no ``final``)."""
        return 0.0

    def select(self, state: LMState | None, index) -> LMState | None:
        """The state of rows ``index [M]`` (beam reorder); None stays None."""
        if state is None:
            return None
        return select_rows(state, row_index("RNNLM.select", "index", index, state.h[0].shape[0]))
