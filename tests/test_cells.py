"""The LSTM and GRU cell updates (attnkit._cells, the C++ cell kernel) against a float64 NumPy
reference written from torch.nn.LSTMCell / GRUCell's formulas."""
import numpy as np
import pytest

import attnkit
from attnkit import _core
from attnkit._cells import gru_update, lstm_update

from conftest import assert_close


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def lstm_reference(gates, c):
    i, f, g, o = np.split(gates, 4, axis=1)
    c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c_new), c_new


def gru_reference(gh, gx, h):
    H = h.shape[1]
    r = sigmoid(gx[:, :H] + gh[:, :H])
    z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1 - z) * n + z * h


# H straddles the vector widths (tails of 1..W-1 lanes); N * H >= 2^14 takes the threads.
SHAPES = [(1, 1), (1, 7), (3, 8), (2, 9), (5, 17), (4, 33), (16, 1024), (40, 5)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,H", SHAPES)
@pytest.mark.parametrize("split", [False, True])
def test_lstm_update_matches_reference(isa, rng, dtype, N, H, split):
    # Gates up to +-12: tanh and sigmoid saturate (the kernel clamps at |x| = 9 in float32).
    g, gx = rng.uniform(-6, 6, (N, 4 * H)), rng.uniform(-6, 6, (N, 4 * H))
    c = rng.standard_normal((N, H)) * 2
    if split:
        h_new, c_new = lstm_update(g.astype(dtype), gx.astype(dtype), c.astype(dtype))
        ref_h, ref_c = lstm_reference(g.astype(dtype).astype(np.float64) + gx.astype(dtype), c.astype(dtype))
    else:
        h_new, c_new = lstm_update((g + gx).astype(dtype), None, c.astype(dtype))
        ref_h, ref_c = lstm_reference((g + gx).astype(dtype).astype(np.float64), c.astype(dtype))
    assert h_new.dtype == c_new.dtype == dtype and h_new.shape == c_new.shape == (N, H)
    assert_close(c_new, ref_c, dtype, "lstm c'")
    assert_close(h_new, ref_h, dtype, "lstm h'")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,H", SHAPES)
def test_gru_update_matches_reference(isa, rng, dtype, N, H):
    gh, gx = rng.uniform(-6, 6, (N, 3 * H)).astype(dtype), rng.uniform(-6, 6, (N, 3 * H)).astype(dtype)
    h = rng.standard_normal((N, H)).astype(dtype)
    h_new = gru_update(gh, gx, h)
    assert h_new.dtype == dtype and h_new.shape == (N, H)
    assert_close(h_new, gru_reference(gh.astype(np.float64), gx, h), dtype, "gru h'")


def test_cell_updates_keep_their_inputs_and_nan(rng):
    g = rng.standard_normal((3, 8)).astype(np.float32)
    c = rng.standard_normal((3, 2)).astype(np.float32)
    g[1, 5] = np.nan  # row 1's forget gate
    before = g.copy(), c.copy()
    h_new, c_new = lstm_update(g, None, c)
    assert np.array_equal(g, before[0], equal_nan=True) and np.array_equal(c, before[1])
    assert np.isnan(c_new[1, 1]) and np.isnan(h_new[1, 1]) and np.isfinite(np.delete(c_new, 3)).all()


def test_cell_update_bits_do_not_depend_on_the_thread_count(rng):
    g = rng.standard_normal((20, 4 * 1000)).astype(np.float32)
    c = rng.standard_normal((20, 1000)).astype(np.float32)
    before = attnkit.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            attnkit.set_num_threads(threads)
            outs.append(lstm_update(g, None, c))
    finally:
        attnkit.set_num_threads(before)
    for h_new, c_new in outs[1:]:
        assert np.array_equal(h_new, outs[0][0]) and np.array_equal(c_new, outs[0][1])


def test_cell_update_errors_name_the_argument(rng):
    g = rng.standard_normal((2, 12)).astype(np.float32)
    c = rng.standard_normal((2, 3)).astype(np.float32)
    h, c2 = np.empty((2, 3), np.float32), np.empty((2, 3), np.float32)
    with pytest.raises(ValueError, match="cell must be 'lstm' or 'gru', got 'rnn'"):
        _core.cell_update("rnn", g, None, c, h, c2)
    with pytest.raises(ValueError, match=r"g must be .* shape \(2, 9\)"):  # GRU: 3 gates
        _core.cell_update("gru", g, g, c, h, None)
    with pytest.raises(ValueError, match=r"gx must be .* got float64 \(2, 12\)"):
        _core.cell_update("lstm", g, g.astype(np.float64), c, h, c2)
    with pytest.raises(ValueError, match="a GRU cell needs gx"):
        _core.cell_update("gru", g[:, :9].copy(), None, c, h, None)
    with pytest.raises(ValueError, match="an LSTM cell needs c_new"):
        _core.cell_update("lstm", g, None, c, h, None)
    with pytest.raises(ValueError, match="the outputs must not overlap the inputs"):
        _core.cell_update("lstm", g, None, c, h, c)
    with pytest.raises(ValueError, match="h_new and c_new must not overlap"):
        _core.cell_update("lstm", g, None, c, h, h)
    with pytest.raises(ValueError, match=r"c must be .* got float64 \(2, 3\)"):
        _core.cell_update("lstm", g, None, c.astype(np.float64), h, c2)
    with pytest.raises(ValueError, match=r"g must be .* shape \(2, 8\), got float32 \(2, 12\)"):  # H from c
        _core.cell_update("lstm", g, None, c[:, :2].copy(), h, c2)
    readonly = np.empty((2, 3), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="the outputs must be writeable"):
        _core.cell_update("lstm", g, None, c, readonly, c2)
    with pytest.raises(TypeError, match="g must be a numpy.ndarray, got list"):
        _core.cell_update("lstm", [1.0], None, c, h, c2)
