"""Float64 NumPy reference for ESPnet's RNN attention family (one decoder step).

Contract: /work/shared/spec/espnet_attention.md (sections 1, 2, 4).  Every
function below computes ONE call of the corresponding ESPnet module's
``forward`` (espnet==202511, ``espnet/nets/pytorch_backend/rnn/attentions.py``)
as a pure function, reproducing ESPnet's numbers, including its quirks:

* default softmax scaling 2.0 (1.0 for the Forward family, 1/sqrt(A_k) for
  MultiHeadDot/Add/MultiResLoc, which ignore ``scaling``);
* the location convolution is a cross-correlation with zero padding F, whose
  kernel (K = 2F+1) may be wider than T;
* coverage sums include the initial uniform state;
* AttLocRec max-pools over ALL T frames (padding dependent);
* Forward/ForwardTA/GDC clamp at 1e-6 and L1-renormalise, so padded frames
  get weight and leak (garbage included) into the context and next state;
* the (B=1 only) window constraint cuts only where lo > 0 / hi < T;
* MultiResLoc head h uses F_h = floor(F*(h+1)/H) (derived here from the
  kernel width of ``loc_conv.h.weight``).

Differences from ESPnet that are purely about API, not numbers:

* No caching: ESPnet caches the encoder projection and mask per utterance
  (ignoring ``enc_hs_pad`` on later calls until ``reset()``); here every call
  recomputes from ``enc``.  Equivalent to ESPnet when the same ``enc`` is fed
  at every step and ``reset()`` is called between utterances.  ``han_mode``
  only disables that cache, so it has no counterpart here.
* Coverage lists: ESPnet appends ``w`` to the caller's list IN PLACE and
  returns the same list object; here a NEW list ``old + [w]`` is returned and
  the input is left untouched.
* GDCAttLoc: ESPnet's dynamic filter zeroes the caller's ``att_prev`` in
  place; here a copy is filtered.
* AttForwardTA: ESPnet keeps ``trans_agent_prob`` (u) as hidden module state
  (0.5 after construction/reset); here it is the explicit argument ``u``
  (None means 0.5) and the new u is returned.
* Initial states: ESPnet builds the uniform state U in float32 for Cov,
  Loc2D, LocRec, CovLoc, MultiHeadLoc and MultiResLoc (float64 modules then
  raise a dtype error on ``att_prev=None``); here U is built in the input
  dtype.  NoAtt builds U in float32 and casts, so its float64 weights are
  float32-rounded: reproduced by ``no_att_step(..., float32_init=True)``.

Computations run in the dtype of ``enc`` (parameters and states are cast to
it); pass float64 arrays for the reference.  ``lengths`` is a sequence of
ints with ``max(lengths) == T`` (ESPnet fails otherwise; so do we).
``params`` are dicts keyed by ESPnet's state_dict names without the module
prefix, e.g. ``mlp_enc.weight``, ``loc_conv.weight``, ``mlp_q.0.weight``.
No torch import.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "DEFAULT_SCALING",
    "STEP_FUNCTIONS",
    "STATE_KIND",
    "uniform_init",
    "one_hot_init",
    "pad_mask",
    "apply_pad_mask",
    "apply_attention_constraint",
    "apply_dynamic_filter",
    "softmax",
    "masked_softmax",
    "location_conv",
    "linear",
    "sigmoid",
    "lstm_cell",
    "shift_right",
    "l1_clamp_normalize",
    "context",
    "make_params",
    "no_att_step",
    "att_dot_step",
    "att_add_step",
    "att_loc_step",
    "att_cov_step",
    "att_loc2d_step",
    "att_loc_rec_step",
    "att_cov_loc_step",
    "att_multi_head_dot_step",
    "att_multi_head_add_step",
    "att_multi_head_loc_step",
    "att_multi_head_multi_res_loc_step",
    "att_forward_step",
    "att_forward_ta_step",
    "gdc_att_loc_step",
]

#: Default ``scaling`` of each class's forward; None where the class ignores
#: it (MultiHeadDot/Add/MultiResLoc use 1/sqrt(A_k)) or has no such argument
#: (NoAtt).
DEFAULT_SCALING: Dict[str, Optional[float]] = {
    "NoAtt": None,
    "AttDot": 2.0,
    "AttAdd": 2.0,
    "AttLoc": 2.0,
    "AttCov": 2.0,
    "AttLoc2D": 2.0,
    "AttLocRec": 2.0,
    "AttCovLoc": 2.0,
    "AttMultiHeadDot": None,
    "AttMultiHeadAdd": None,
    "AttMultiHeadLoc": 2.0,
    "AttMultiHeadMultiResLoc": None,
    "AttForward": 1.0,
    "AttForwardTA": 1.0,
    "GDCAttLoc": 1.0,
}

#: State kind of each class (spec section 1.1).
STATE_KIND: Dict[str, str] = {
    "NoAtt": "tensor_bt",
    "AttDot": "tensor_bt",
    "AttAdd": "tensor_bt",
    "AttLoc": "tensor_bt",
    "AttCov": "coverage_list",
    "AttLoc2D": "window_bwt",
    "AttLocRec": "w_hc",
    "AttCovLoc": "coverage_list",
    "AttMultiHeadDot": "heads_list",
    "AttMultiHeadAdd": "heads_list",
    "AttMultiHeadLoc": "heads_list",
    "AttMultiHeadMultiResLoc": "heads_list",
    "AttForward": "tensor_bt",
    "AttForwardTA": "tensor_bt",
    "GDCAttLoc": "tensor_bt",
}


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------

def _dtype(enc: np.ndarray) -> np.dtype:
    dt = np.asarray(enc).dtype
    return dt if np.issubdtype(dt, np.floating) else np.dtype(np.float64)


def _get(params: dict, name: str, dt) -> np.ndarray:
    return np.asarray(params[name], dtype=dt)


def _check_lengths(lengths: Sequence[int], B: int, T: int) -> List[int]:
    lengths = [int(x) for x in lengths]
    if len(lengths) != B:
        raise ValueError(f"len(lengths)={len(lengths)} != batch {B}")
    if max(lengths) != T:
        # ESPnet's mask has width max(lengths); masked_fill then fails.
        raise ValueError(f"ESPnet requires T == max(lengths); got T={T}, "
                         f"max(lengths)={max(lengths)}")
    return lengths


def pad_mask(lengths: Sequence[int], T: int) -> np.ndarray:
    """Bool mask (B, T), True on padded frames (t >= lengths[b])."""
    lengths = np.asarray([int(x) for x in lengths])
    return np.arange(T)[None, :] >= lengths[:, None]


def uniform_init(lengths: Sequence[int], T: int, dtype=np.float64) -> np.ndarray:
    """U (B, T): 1/l_b on the first l_b frames, 0 elsewhere, computed in
    ``dtype`` (so ``dtype=np.float32`` gives ESPnet's float32 U exactly)."""
    dt = np.dtype(dtype)
    valid = (~pad_mask(lengths, T)).astype(dt)
    lens = np.asarray([int(x) for x in lengths]).astype(dt)
    with np.errstate(divide="ignore", invalid="ignore"):
        return valid / lens[:, None]


def one_hot_init(B: int, T: int, dtype=np.float64) -> np.ndarray:
    """Forward-family initial state (B, T): 1 on frame 0, 0 elsewhere."""
    a = np.zeros((B, T), dtype=dtype)
    a[:, 0] = 1.0
    return a


def apply_pad_mask(e: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """Return a copy of energies e (B, T) with padded frames set to -inf."""
    e = np.array(e, copy=True)
    e[pad_mask(lengths, e.shape[1])] = -np.inf
    return e


def apply_attention_constraint(e: np.ndarray, last_attended_idx: int,
                               backward_window: int = 1,
                               forward_window: int = 3) -> np.ndarray:
    """Deep Voice 3 window on energies (copy).  B must be 1.  With
    lo = idx - bw, hi = idx + fw: e[:, :lo] = -inf only if lo > 0 and
    e[:, hi:] = -inf only if hi < T (Python slicing, as ESPnet)."""
    if e.shape[0] != 1:
        raise NotImplementedError("Batch attention constraining is not yet supported.")
    e = np.array(e, copy=True)
    lo = last_attended_idx - backward_window
    hi = last_attended_idx + forward_window
    if lo > 0:
        e[:, :lo] = -np.inf
    if hi < e.shape[1]:
        e[:, hi:] = -np.inf
    return e


def apply_dynamic_filter(p: np.ndarray, last_attended_idx: int,
                         backward_window: int = 1,
                         forward_window: int = 3) -> np.ndarray:
    """GDC's window on the previous weights (copy; ESPnet mutates in place):
    zero outside the window with the same lo>0 / hi<T rules.  B must be 1."""
    if p.shape[0] != 1:
        raise NotImplementedError("Batch dynamic filter is not yet supported.")
    p = np.array(p, copy=True)
    lo = last_attended_idx - backward_window
    hi = last_attended_idx + forward_window
    if lo > 0:
        p[:, :lo] = 0
    if hi < p.shape[1]:
        p[:, hi:] = 0
    return p


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax as torch computes it: exp(x - max) / sum.  All -inf rows -> NaN."""
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        ex = np.exp(x - m)
        return ex / np.sum(ex, axis=axis, keepdims=True)


def masked_softmax(e: np.ndarray, lengths: Sequence[int], scaling: float,
                   last_attended_idx: Optional[int] = None,
                   backward_window: int = 1, forward_window: int = 3) -> np.ndarray:
    """w = softmax(scaling * e) after -inf padding mask (and optional
    constraint window).  e (B, T) -> w (B, T).  scaling <= 0 gives NaN as
    in ESPnet."""
    e = apply_pad_mask(e, lengths)
    if last_attended_idx is not None:
        e = apply_attention_constraint(e, last_attended_idx, backward_window,
                                       forward_window)
    with np.errstate(invalid="ignore"):
        return softmax(scaling * e, axis=1)


def location_conv(a: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """ESPnet location conv: Conv2d(1, C, (Wh, K), padding=(0, F), bias=False)
    with K = 2F+1 (F derived from the weight).  Cross-correlation, zero
    padding, kernel NOT flipped, K may exceed T.

    a: (B, T) (Wh must be 1) or (B, Wh, T); weight: (C, 1, Wh, K).
    Returns f (B, T, C) with f[b,t,c] = sum_{r,j} W[c,0,r,j] a[b,r,t+j-F].
    """
    weight = np.asarray(weight)
    C, one, Wh, K = weight.shape
    if one != 1 or K % 2 != 1:
        raise ValueError(f"unexpected loc_conv weight shape {weight.shape}")
    F = (K - 1) // 2
    a3 = a[:, None, :] if a.ndim == 2 else a
    if a3.shape[1] != Wh:
        raise ValueError(f"state rows {a3.shape[1]} != conv height {Wh}")
    B, _, T = a3.shape
    ap = np.zeros((B, Wh, T + 2 * F), dtype=np.result_type(a3, weight))
    ap[:, :, F:F + T] = a3
    win = np.lib.stride_tricks.sliding_window_view(ap, K, axis=2)  # (B,Wh,T,K)
    return np.einsum("brtk,crk->btc", win, weight[:, 0])


def linear(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None) -> np.ndarray:
    """torch.nn.Linear: x @ W.T (+ b); W is [out, in]."""
    y = x @ weight.T
    return y if bias is None else y + bias


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def lstm_cell(x: np.ndarray, h: np.ndarray, c: np.ndarray, w_ih: np.ndarray,
              w_hh: np.ndarray, b_ih=None, b_hh=None) -> Tuple[np.ndarray, np.ndarray]:
    """torch.nn.LSTMCell (gate order i, f, g, o).  x (B,In), h/c (B,Hd)."""
    g = x @ w_ih.T + h @ w_hh.T
    if b_ih is not None:
        g = g + b_ih
    if b_hh is not None:
        g = g + b_hh
    i, f, gg, o = np.split(g, 4, axis=1)
    c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(gg)
    h_new = sigmoid(o) * np.tanh(c_new)
    return h_new, c_new


def shift_right(a: np.ndarray) -> np.ndarray:
    """shift(a)[:, t] = a[:, t-1], shift(a)[:, 0] = 0 (F.pad(a,(1,0))[:, :-1])."""
    s = np.zeros_like(a)
    s[:, 1:] = a[:, :-1]
    return s


def l1_clamp_normalize(w: np.ndarray) -> np.ndarray:
    """F.normalize(clamp(w, 1e-6), p=1, dim=1): every frame (padded ones
    included) gets at least 1e-6 before the L1 renormalisation."""
    w = np.maximum(w, 1e-6)
    return w / np.maximum(np.sum(np.abs(w), axis=1, keepdims=True), 1e-12)


def context(w: np.ndarray, values: np.ndarray) -> np.ndarray:
    """c[b] = sum over ALL T frames of w[b,t] * values[b,t,:]  -> (B, D)."""
    return np.einsum("bt,btd->bd", w, values)


def _prep(enc, lengths, dec_z, dunits):
    dt = _dtype(enc)
    enc = np.asarray(enc, dtype=dt)
    B, T = enc.shape[:2]
    lengths = _check_lengths(lengths, B, T)
    if dec_z is None:
        dec_z = np.zeros((B, dunits), dtype=dt)
    else:
        dec_z = np.asarray(dec_z, dtype=dt).reshape(B, dunits)
    return dt, enc, B, T, lengths, dec_z


def _energy_mlp(params, dt, pre, terms):
    """gvec(tanh(pre + sum(terms))) squeezed to (B, T)."""
    x = pre
    for t in terms:
        x = x + t
    return linear(np.tanh(x), _get(params, "gvec.weight", dt),
                  _get(params, "gvec.bias", dt))[..., 0]


# --------------------------------------------------------------------------
# the 15 classes
# --------------------------------------------------------------------------

def no_att_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                dec_z: Optional[np.ndarray] = None, att_prev: Optional[np.ndarray] = None,
                float32_init: bool = True):
    """NoAtt.  c = sum_t U*enc (mean of valid frames), the same every step;
    state = att_prev if given else U.  ``dec_z`` and ``params`` are ignored.

    ESPnet builds U in float32 and casts it to the encoder dtype, so with
    ``float32_init=True`` (default) float64 weights are float32-rounded like
    ESPnet's.  ESPnet caches c at the first call (with att_prev None); if the
    first call after reset passes a non-None att_prev it returns c = None.
    Here c is always recomputed from U.  Returns (c (B,E), state (B,T)).
    """
    dt = _dtype(enc)
    enc = np.asarray(enc, dtype=dt)
    B, T = enc.shape[:2]
    lengths = _check_lengths(lengths, B, T)
    u = uniform_init(lengths, T, np.float32 if float32_init else dt).astype(dt)
    c = context(u, enc)
    state = u if att_prev is None else np.asarray(att_prev, dtype=dt)
    return c, state


def att_dot_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                 dec_z: Optional[np.ndarray], att_prev=None, scaling: float = 2.0):
    """AttDot.  P = tanh(enc W_enc^T + b_enc), q = tanh(dec_z W_dec^T + b_dec),
    e = <P, q>, w = softmax(s e) (masked), c = sum w enc.  att_prev ignored.
    Returns (c (B,E), w (B,T))."""
    dunits = np.shape(params["mlp_dec.weight"])[1]
    dt, enc, B, T, lengths, dec_z = _prep(enc, lengths, dec_z, dunits)
    P = np.tanh(linear(enc, _get(params, "mlp_enc.weight", dt), _get(params, "mlp_enc.bias", dt)))
    q = np.tanh(linear(dec_z, _get(params, "mlp_dec.weight", dt), _get(params, "mlp_dec.bias", dt)))
    e = np.sum(P * q[:, None, :], axis=2)
    w = masked_softmax(e, lengths, scaling)
    return context(w, enc), w


def att_add_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                 dec_z: Optional[np.ndarray], att_prev=None, scaling: float = 2.0):
    """AttAdd (Bahdanau).  e = gvec(tanh(enc W_enc^T + b_enc + dec_z W_dec^T)).
    att_prev ignored.  Returns (c (B,E), w (B,T))."""
    dunits = np.shape(params["mlp_dec.weight"])[1]
    dt, enc, B, T, lengths, dec_z = _prep(enc, lengths, dec_z, dunits)
    P = linear(enc, _get(params, "mlp_enc.weight", dt), _get(params, "mlp_enc.bias", dt))
    q = linear(dec_z, _get(params, "mlp_dec.weight", dt))
    e = _energy_mlp(params, dt, P, [q[:, None, :]])
    w = masked_softmax(e, lengths, scaling)
    return context(w, enc), w


def _loc_energy(params, dt, enc, dec_z, a):
    P = linear(enc, _get(params, "mlp_enc.weight", dt), _get(params, "mlp_enc.bias", dt))
    q = linear(dec_z, _get(params, "mlp_dec.weight", dt))
    g = linear(location_conv(a, _get(params, "loc_conv.weight", dt)),
               _get(params, "mlp_att.weight", dt))
    return _energy_mlp(params, dt, P, [g, q[:, None, :]])


def att_loc_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                 dec_z: Optional[np.ndarray], att_prev: Optional[np.ndarray],
                 scaling: float = 2.0, last_attended_idx: Optional[int] = None,
                 backward_window: int = 1, forward_window: int = 3):
    """AttLoc (Chorowski location-aware).  a = att_prev or U;
    e = gvec(tanh(LocConv(a) W_att^T + enc W_enc^T + b_enc + dec_z W_dec^T));
    mask, optional B=1 window constraint, w = softmax(s e).
    Returns (c (B,E), w (B,T))."""
    dunits = np.shape(params["mlp_dec.weight"])[1]
    dt, enc, B, T, lengths, dec_z = _prep(enc, lengths, dec_z, dunits)
    a = uniform_init(lengths, T, dt) if att_prev is None else np.asarray(att_prev, dt).reshape(B, T)
    e = _loc_energy(params, dt, enc, dec_z, a)
    w = masked_softmax(e, lengths, scaling, last_attended_idx, backward_window, forward_window)
    return context(w, enc), w


def att_cov_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                 dec_z: Optional[np.ndarray], att_prev_list: Optional[List[np.ndarray]],
                 scaling: float = 2.0):
    """AttCov (coverage).  list = att_prev_list or [U]; cov = sum(list)
    (U stays in the sum forever); g = cov[...,None] * wvec.weight[:,0] + wvec.bias;
    e = gvec(tanh(g + P + q)).  Returns (c (B,E), list + [w]) -- a NEW list;
    ESPnet appends to the caller's list in place and returns that object."""
    dunits = np.shape(params["mlp_dec.weight"])[1]
    dt, enc, B, T, lengths, dec_z = _prep(enc, lengths, dec_z, dunits)
    lst = [uniform_init(lengths, T, dt)] if att_prev_list is None else \
        [np.asarray(x, dt) for x in att_prev_list]
    cov = sum(lst)
    g = linear(cov[..., None], _get(params, "wvec.weight", dt), _get(params, "wvec.bias", dt))
    P = linear(enc, _get(params, "mlp_enc.weight", dt), _get(params, "mlp_enc.bias", dt))
    q = linear(dec_z, _get(params, "mlp_dec.weight", dt))
    e = _energy_mlp(params, dt, g, [P, q[:, None, :]])
    w = masked_softmax(e, lengths, scaling)
    return context(w, enc), lst + [w]


def att_loc2d_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                   dec_z: Optional[np.ndarray], att_prev: Optional[np.ndarray],
                   scaling: float = 2.0):
    """AttLoc2D.  att_prev (B, W, T), oldest row first (None -> W copies of U);
    conv weight [C,1,W,K] collapses the W rows.  Returns (c (B,E), state
    (B,W,T)) with state = concat(att_prev, w)[:, 1:]; w = state[:, -1]."""
    dunits = np.shape(params["mlp_dec.weight"])[1]
    dt, enc, B, T, lengths, dec_z = _prep(enc, lengths, dec_z, dunits)
    W = np.shape(params["loc_conv.weight"])[2]
    if att_prev is None:
        a = np.repeat(uniform_init(lengths, T, dt)[:, None, :], W, axis=1)
    else:
        a = np.asarray(att_prev, dt)
    e = _loc_energy(params, dt, enc, dec_z, a)
    w = masked_softmax(e, lengths, scaling)
    state = np.concatenate([a, w[:, None, :]], axis=1)[:, 1:]
    return context(w, enc), state


def att_loc_rec_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                     dec_z: Optional[np.ndarray], att_prev_states, scaling: float = 2.0):
    """AttLocRec.  att_prev_states = (a (B,T), (h (B,A), c (B,A))) or None
    (a = U, h = c = 0).  v = max over ALL T frames (padding included, so it is
    padding-dependent) of ReLU(LocConv(a)); (h', c') = LSTMCell(v, (h, c))
    without bias; e = gvec(tanh(h' + P + q)).
    Returns (c (B,E), (w (B,T), (h', c')))."""
    dunits = np.shape(params["mlp_dec.weight"])[1]
    dt, enc, B, T, lengths, dec_z = _prep(enc, lengths, dec_z, dunits)
    A = np.shape(params["mlp_enc.weight"])[0]
    if att_prev_states is None:
        a = uniform_init(lengths, T, dt)
        h = np.zeros((B, A), dt)
        cl = np.zeros((B, A), dt)
    else:
        a = np.asarray(att_prev_states[0], dt)
        h = np.asarray(att_prev_states[1][0], dt)
        cl = np.asarray(att_prev_states[1][1], dt)
    f = np.maximum(location_conv(a, _get(params, "loc_conv.weight", dt)), 0)
    v = np.max(f, axis=1)  # (B, C), unmasked
    h_new, c_new = lstm_cell(v, h, cl, _get(params, "att_lstm.weight_ih", dt),
                             _get(params, "att_lstm.weight_hh", dt))
    P = linear(enc, _get(params, "mlp_enc.weight", dt), _get(params, "mlp_enc.bias", dt))
    q = linear(dec_z, _get(params, "mlp_dec.weight", dt))
    e = _energy_mlp(params, dt, h_new[:, None, :], [P, q[:, None, :]])
    w = masked_softmax(e, lengths, scaling)
    return context(w, enc), (w, (h_new, c_new))


def att_cov_loc_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                     dec_z: Optional[np.ndarray], att_prev_list: Optional[List[np.ndarray]],
                     scaling: float = 2.0):
    """AttCovLoc.  As AttLoc with a = sum(list) (U included), list = att_prev_list
    or [U].  Returns (c (B,E), list + [w]) -- a NEW list (ESPnet mutates the
    caller's list in place)."""
    dunits = np.shape(params["mlp_dec.weight"])[1]
    dt, enc, B, T, lengths, dec_z = _prep(enc, lengths, dec_z, dunits)
    lst = [uniform_init(lengths, T, dt)] if att_prev_list is None else \
        [np.asarray(x, dt) for x in att_prev_list]
    e = _loc_energy(params, dt, enc, dec_z, sum(lst))
    w = masked_softmax(e, lengths, scaling)
    return context(w, enc), lst + [w]


def _num_heads(params: dict) -> int:
    H = 0
    while f"mlp_q.{H}.weight" in params:
        H += 1
    return H


def _multi_head(params, enc, lengths, dec_z, att_prev, kind, scaling):
    dunits = np.shape(params["mlp_q.0.weight"])[1]
    dt, enc, B, T, lengths, dec_z = _prep(enc, lengths, dec_z, dunits)
    H = _num_heads(params)
    if kind in ("loc", "mres") and att_prev is None:
        att_prev = [uniform_init(lengths, T, dt) for _ in range(H)]
    cs, ws = [], []
    for h in range(H):
        Wk = _get(params, f"mlp_k.{h}.weight", dt)
        Ak = Wk.shape[0]
        K = linear(enc, Wk)
        V = linear(enc, _get(params, f"mlp_v.{h}.weight", dt))
        q = linear(dec_z, _get(params, f"mlp_q.{h}.weight", dt), _get(params, f"mlp_q.{h}.bias", dt))
        if kind == "dot":
            e = np.sum(np.tanh(K) * np.tanh(q)[:, None, :], axis=2)
        else:
            terms = [q[:, None, :]]
            if kind in ("loc", "mres"):
                a = np.asarray(att_prev[h], dt)
                terms.insert(0, linear(location_conv(a, _get(params, f"loc_conv.{h}.weight", dt)),
                                       _get(params, f"mlp_att.{h}.weight", dt)))
            x = K
            for t in terms:
                x = x + t
            e = linear(np.tanh(x), _get(params, f"gvec.{h}.weight", dt),
                       _get(params, f"gvec.{h}.bias", dt))[..., 0]
        s = scaling if kind == "loc" else 1.0 / float(np.sqrt(Ak))  # Python float: keeps float32
        w = masked_softmax(e, lengths, s)
        ws.append(w)
        cs.append(context(w, V))
    c = linear(np.concatenate(cs, axis=1), _get(params, "mlp_o.weight", dt))
    return c, ws


def att_multi_head_dot_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                            dec_z: Optional[np.ndarray], att_prev=None,
                            scaling: Optional[float] = None, **kwargs):
    """AttMultiHeadDot.  Per head: K_h = tanh(enc W_k^T), V_h = enc W_v^T,
    e_h = <K_h, tanh(dec_z W_q^T + b_q)>, w_h = softmax(e_h / sqrt(A_k)),
    c = concat_h(sum w_h V_h) W_o^T.  ``scaling`` and att_prev are ignored
    (as in ESPnet).  Returns (c (B,E), [w_0..w_{H-1}])."""
    return _multi_head(params, enc, lengths, dec_z, None, "dot", None)


def att_multi_head_add_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                            dec_z: Optional[np.ndarray], att_prev=None,
                            scaling: Optional[float] = None, **kwargs):
    """AttMultiHeadAdd.  e_h = gvec_h(tanh(enc W_k^T + dec_z W_q^T + b_q)),
    w_h = softmax(e_h / sqrt(A_k)); ``scaling`` and att_prev ignored.
    Returns (c (B,E), [w_h])."""
    return _multi_head(params, enc, lengths, dec_z, None, "add", None)


def att_multi_head_loc_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                            dec_z: Optional[np.ndarray], att_prev: Optional[List[np.ndarray]],
                            scaling: float = 2.0, **kwargs):
    """AttMultiHeadLoc.  att_prev = list of H (B,T) (None -> H copies of U);
    e_h = gvec_h(tanh(K_h + LocConv_h(a_h) W_att,h^T + q_h)),
    w_h = softmax(scaling * e_h) -- honours ``scaling`` (default 2.0), NOT
    1/sqrt(A_k).  Returns (c (B,E), [w_h])."""
    return _multi_head(params, enc, lengths, dec_z, att_prev, "loc", scaling)


def att_multi_head_multi_res_loc_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                                      dec_z: Optional[np.ndarray],
                                      att_prev: Optional[List[np.ndarray]],
                                      scaling: Optional[float] = None, **kwargs):
    """AttMultiHeadMultiResLoc.  As MultiHeadLoc but head h's kernel has
    half-width F_h = floor(F*(h+1)/H) (taken from loc_conv.h.weight) and
    w_h = softmax(e_h / sqrt(A_k)); ``scaling`` ignored.  Returns (c, [w_h])."""
    return _multi_head(params, enc, lengths, dec_z, att_prev, "mres", None)


def _forward_common(params, enc, lengths, dec_z, att_prev, scaling,
                    last_attended_idx, bw, fw):
    dunits = np.shape(params["mlp_dec.weight"])[1]
    dt, enc, B, T, lengths, dec_z = _prep(enc, lengths, dec_z, dunits)
    a = one_hot_init(B, T, dt) if att_prev is None else np.asarray(att_prev, dt).reshape(B, T)
    e = _loc_energy(params, dt, enc, dec_z, a)
    w = masked_softmax(e, lengths, scaling, last_attended_idx, bw, fw)
    return dt, enc, dec_z, a, w


def att_forward_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                     dec_z: Optional[np.ndarray], att_prev: Optional[np.ndarray],
                     scaling: float = 1.0, last_attended_idx: Optional[int] = None,
                     backward_window: int = 1, forward_window: int = 3):
    """AttForward (Zhang et al. 2018).  a = att_prev or one-hot(frame 0);
    w0 = AttLoc-style masked (+constraint) softmax(s e);
    w = L1norm(max((a + shift(a)) * w0, 1e-6)) -- padded frames get >= 1e-6/Z
    and leak into c (which sums over all T frames).  Returns (c (B,E), w (B,T))."""
    dt, enc, dec_z, a, w = _forward_common(params, enc, lengths, dec_z, att_prev, scaling,
                                           last_attended_idx, backward_window, forward_window)
    w = l1_clamp_normalize((a + shift_right(a)) * w)
    return context(w, enc), w


def att_forward_ta_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                        dec_z: Optional[np.ndarray], att_prev: Optional[np.ndarray],
                        out_prev: np.ndarray, u=None, scaling: float = 1.0,
                        last_attended_idx: Optional[int] = None,
                        backward_window: int = 1, forward_window: int = 3):
    """AttForwardTA (forward attention with transition agent).  u = ESPnet's
    hidden ``trans_agent_prob``: None means 0.5 (after construction/reset),
    else (B,1).  w = L1norm(max((u a + (1-u) shift(a)) * w0, 1e-6));
    u' = sigmoid(mlp_ta([c ; out_prev ; dec_z])) -- order c (E), out_prev (O),
    dec_z (Dz, zero-filled if None).  out_prev (B, O).
    Returns (c (B,E), w (B,T), u' (B,1))."""
    dt, enc, dec_z, a, w = _forward_common(params, enc, lengths, dec_z, att_prev, scaling,
                                           last_attended_idx, backward_window, forward_window)
    uu = 0.5 if u is None else np.asarray(u, dt)
    w = l1_clamp_normalize((uu * a + (1 - uu) * shift_right(a)) * w)
    c = context(w, enc)
    x = np.concatenate([c, np.asarray(out_prev, dt), dec_z], axis=1)
    u_new = sigmoid(linear(x, _get(params, "mlp_ta.weight", dt), _get(params, "mlp_ta.bias", dt)))
    return c, w, u_new


def gdc_att_loc_step(params: dict, enc: np.ndarray, lengths: Sequence[int],
                     trans_token: np.ndarray, dec_z: Optional[np.ndarray],
                     att_prev: Optional[np.ndarray], scaling: float = 1.0,
                     last_attended_idx: Optional[int] = None,
                     backward_window: int = 1, forward_window: int = 3):
    """GDCAttLoc (Singing-Tacotron).  Note ``trans_token`` (B,T,1) or (B,T)
    comes BEFORE dec_z.  a = att_prev or one-hot(frame 0); w0 = masked
    softmax(s e) with e from LocConv(a) (NO constraint on e); if
    last_attended_idx is given (B=1) the window zeroes a copy of a (ESPnet:
    in place, after the conv); tau = trans_token;
    w = L1norm(max(((1 - shift(tau)) shift(a) + tau a) * w0, 1e-6)).
    ``pt_zero_linear`` params are unused.  Returns (c (B,E), w (B,T))."""
    dt, enc, dec_z, a, w = _forward_common(params, enc, lengths, dec_z, att_prev, scaling,
                                           None, backward_window, forward_window)
    if last_attended_idx is not None:
        a = apply_dynamic_filter(a, last_attended_idx, backward_window, forward_window)
    tau = np.asarray(trans_token, dt)
    if tau.ndim == 3:
        tau = tau[..., 0]
    w = l1_clamp_normalize(((1 - shift_right(tau)) * shift_right(a) + tau * a) * w)
    return context(w, enc), w


#: class name -> step function
STEP_FUNCTIONS = {
    "NoAtt": no_att_step,
    "AttDot": att_dot_step,
    "AttAdd": att_add_step,
    "AttLoc": att_loc_step,
    "AttCov": att_cov_step,
    "AttLoc2D": att_loc2d_step,
    "AttLocRec": att_loc_rec_step,
    "AttCovLoc": att_cov_loc_step,
    "AttMultiHeadDot": att_multi_head_dot_step,
    "AttMultiHeadAdd": att_multi_head_add_step,
    "AttMultiHeadLoc": att_multi_head_loc_step,
    "AttMultiHeadMultiResLoc": att_multi_head_multi_res_loc_step,
    "AttForward": att_forward_step,
    "AttForwardTA": att_forward_ta_step,
    "GDCAttLoc": gdc_att_loc_step,
}


# --------------------------------------------------------------------------
# random parameters with ESPnet's names and shapes
# --------------------------------------------------------------------------

def make_params(cls_name: str, rng: np.random.Generator, eprojs: int, dunits: int,
                att_dim: int, aconv_chans: int = 3, aconv_filts: int = 4,
                aheads: int = 2, awin: int = 3, odim: int = 5,
                dtype=np.float64, att_dim_v: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Random params dict for ``cls_name`` with ESPnet's exact state_dict
    names/shapes (no prefix).  Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.25)
    (non-zero so that bias bugs show).  Multi-head classes use
    A_k = att_dim and A_v = att_dim_v or att_dim (the factory uses A_k = A_v).
    Conv weights are [C, 1, Wh, 2F+1] (Wh = awin for AttLoc2D, else 1); for
    AttMultiHeadMultiResLoc head h uses F_h = aconv_filts*(h+1)//aheads."""
    E, Dz, A, C, F, H = eprojs, dunits, att_dim, aconv_chans, aconv_filts, aheads
    Av = att_dim_v or att_dim
    p: Dict[str, np.ndarray] = {}

    def w(name, *shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        p[name] = (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(dtype)

    def b(name, n):
        p[name] = (0.5 * rng.standard_normal((n,))).astype(dtype)

    def enc_dec(dec_bias=False):
        w("mlp_enc.weight", A, E)
        b("mlp_enc.bias", A)
        w("mlp_dec.weight", A, Dz)
        if dec_bias:
            b("mlp_dec.bias", A)

    def gvec():
        w("gvec.weight", 1, A)
        b("gvec.bias", 1)

    def loc(wh=1):
        w("mlp_att.weight", A, C)
        w("loc_conv.weight", C, 1, wh, 2 * F + 1)

    if cls_name == "NoAtt":
        pass
    elif cls_name == "AttDot":
        enc_dec(dec_bias=True)
    elif cls_name == "AttAdd":
        enc_dec()
        gvec()
    elif cls_name in ("AttLoc", "AttCovLoc", "AttForward", "AttForwardTA", "GDCAttLoc"):
        enc_dec()
        loc()
        gvec()
        if cls_name == "AttForwardTA":
            w("mlp_ta.weight", 1, E + Dz + odim)
            b("mlp_ta.bias", 1)
        if cls_name == "GDCAttLoc":
            w("pt_zero_linear.weight", 1, A)
            b("pt_zero_linear.bias", 1)
    elif cls_name == "AttCov":
        enc_dec()
        w("wvec.weight", A, 1)
        b("wvec.bias", A)
        gvec()
    elif cls_name == "AttLoc2D":
        enc_dec()
        loc(wh=awin)
        gvec()
    elif cls_name == "AttLocRec":
        enc_dec()
        w("loc_conv.weight", C, 1, 1, 2 * F + 1)
        w("att_lstm.weight_ih", 4 * A, C)
        w("att_lstm.weight_hh", 4 * A, A)
        gvec()
    elif cls_name in ("AttMultiHeadDot", "AttMultiHeadAdd", "AttMultiHeadLoc",
                      "AttMultiHeadMultiResLoc"):
        for h in range(H):
            w(f"mlp_q.{h}.weight", A, Dz)
            b(f"mlp_q.{h}.bias", A)
            w(f"mlp_k.{h}.weight", A, E)
            w(f"mlp_v.{h}.weight", Av, E)
            if cls_name != "AttMultiHeadDot":
                w(f"gvec.{h}.weight", 1, A)
                b(f"gvec.{h}.bias", 1)
            if cls_name in ("AttMultiHeadLoc", "AttMultiHeadMultiResLoc"):
                Fh = F if cls_name == "AttMultiHeadLoc" else F * (h + 1) // H
                w(f"loc_conv.{h}.weight", C, 1, 1, 2 * Fh + 1)
                w(f"mlp_att.{h}.weight", A, C)
        w("mlp_o.weight", E, H * Av)
    else:
        raise KeyError(f"unknown ESPnet attention class {cls_name!r}")
    return p


def weights_from_state(cls_name, state):
    """This step's attention weights out of a class's returned state (spec 1.1 state kinds):
    ``[B, T]``, or ``[B, H, T]`` for the multi-head classes."""
    kind = STATE_KIND[cls_name]
    if kind == "window_bwt":
        return state[:, -1]
    if kind == "coverage_list":
        return state[-1]
    if kind == "w_hc":
        return state[0]
    if kind == "heads_list":
        return np.stack(state, axis=1)
    return state


def ctor_args(cls, E, Dz, A, C, F, H, W, O, Av=None):
    """The constructor arguments of ESPnet's class ``cls`` (and attnkit's), in ESPnet's order."""
    Av = Av or A
    if cls == "NoAtt":
        return ()
    if cls in ("AttDot", "AttAdd", "AttCov"):
        return (E, Dz, A)
    if cls in ("AttLoc", "AttLocRec", "AttCovLoc", "AttForward", "GDCAttLoc"):
        return (E, Dz, A, C, F)
    if cls == "AttLoc2D":
        return (E, Dz, A, W, C, F)
    if cls in ("AttMultiHeadDot", "AttMultiHeadAdd"):
        return (E, Dz, H, A, Av)
    if cls in ("AttMultiHeadLoc", "AttMultiHeadMultiResLoc"):
        return (E, Dz, H, A, Av, C, F)
    return (E, Dz, A, C, F, O)  # AttForwardTA
