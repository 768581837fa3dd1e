"""LSTM and GRU cell updates from gate pre-activations, on attnkit's C++ cell kernel (NumPy arrays).

The decoder's, the language model's and AttLocRec's cells compute their products with ``linear``
and hand the gates to these. The same vector code runs the encoder's recurrent layers. In NumPy
the update took 8-9 calls whose float32 tanh is scalar on this NumPy build (~3-5 ns per element):
an LSTM cell of 1024 units at beam 10 took 340-470 us, the kernel 31-39 us (benchmarks/NOTES.md,
"Encoder recurrent layers" 4).
"""
from __future__ import annotations

import numpy as np

from attnkit import _core
from attnkit._arrays import c_aligned


def lstm_update(g: np.ndarray, gx: np.ndarray | None, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torch.nn.LSTMCell's update: gates ``g + gx`` ``[N, 4H]`` (gx None: g alone; order i, f, g,
    o), c ``[N, H]``; returns new arrays (h', c')."""
    g = c_aligned(g)
    gx = None if gx is None else c_aligned(np.asarray(gx, g.dtype))
    c = c_aligned(np.asarray(c, g.dtype))
    h_new, c_new = np.empty(c.shape, g.dtype), np.empty(c.shape, g.dtype)
    _core.cell_update("lstm", g, gx, c, h_new, c_new)
    return h_new, c_new


def gru_update(g: np.ndarray, gx: np.ndarray, h: np.ndarray) -> np.ndarray:
    """torch.nn.GRUCell's update: g the recurrent part ``h W_hh^T + b_hh`` ``[N, 3H]``, gx the input
    part ``x W_ih^T + b_ih``, h ``[N, H]`` (order r, z, n); returns a new array h'."""
    g = c_aligned(g)
    gx = c_aligned(np.asarray(gx, g.dtype))
    h = c_aligned(np.asarray(h, g.dtype))
    h_new = np.empty(h.shape, g.dtype)
    _core.cell_update("gru", g, gx, h, h_new, None)
    return h_new
