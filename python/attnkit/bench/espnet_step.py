"""One decoder step of ESPnet's RNN attentions on three backends: attnkit (`attnkit.espnet`),
NumPy, and PyTorch eager ops written as ESPnet's ``forward()`` writes them.

The NumPy and PyTorch peers hold what ESPnet's batch beam search holds: the encoder and its
projections repeated per hypothesis row (``enc[rows]``), projected once per utterance, outside
the timing. attnkit keeps one copy per utterance (``prepare``) and indexes it with ``rows``.
Every backend steps from the case's previous weights ``a_prev``, different for every row.
Used by `attnkit bench --ops espnet-step` and `benchmarks/bench_espnet_step.py`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

import attnkit.espnet

if TYPE_CHECKING:
    from attnkit.bench.cases import EspnetStepCase

# The classes whose step keeps the previous weights as its state (location-aware).
STATEFUL = ("AttLoc", "AttMultiHeadLoc")


def make_attention(case: "EspnetStepCase", params=None, seed: int = 0):
    """The attnkit module of `case.cls` at the case's sizes and dtype (random weights from
    `seed`, or `params`: ESPnet state_dict names -> arrays)."""
    cls = getattr(attnkit.espnet, case.cls)
    kw = {"dtype": case.dtype, "params": params, "seed": seed}
    if case.cls == "AttLoc":
        return cls(case.E, case.Dz, case.A, case.C, case.F, **kw)
    if case.cls in ("AttAdd", "AttDot"):
        return cls(case.E, case.Dz, case.A, **kw)
    return cls(case.E, case.Dz, case.heads, case.A, case.A, case.C, case.F, **kw)


# ---- NumPy ---------------------------------------------------------------------------------------


def numpy_step(name, p, pre, enc, valid, dec_z, a_prev, heads=1):
    """ESPnet's step in NumPy on per-row repeated arrays: pre ``[N, T, A]`` (multi-head: a list of
    per-head (keys, values)), enc ``[N, T, E]``, valid ``[N, T]`` bool, dec_z ``[N, Dz]``, a_prev
    ``[N, T]``. Returns (context ``[N, E]``, weights ``[N, T]``; None for multi-head)."""

    def loc_term(a, w_conv, w_att):
        chans, k = w_conv.shape[0], w_conv.shape[-1]
        n, t = a.shape
        padded = np.zeros((n, t + k - 1), a.dtype)
        padded[:, (k - 1) // 2:(k - 1) // 2 + t] = a
        cols = np.lib.stride_tricks.sliding_window_view(padded, k, axis=1)  # [N, T, K]
        return (cols @ w_conv.reshape(chans, k).T) @ w_att.T

    def softmax_context(e, values, scaling):
        e = np.where(valid, scaling * e, -np.inf)
        e -= e.max(1, keepdims=True)
        w = np.exp(e)
        w /= w.sum(1, keepdims=True)
        return np.einsum("nt,nte->ne", w, values), w

    if name == "AttDot":
        q = np.tanh(dec_z @ p["mlp_dec.weight"].T + p["mlp_dec.bias"])
        return softmax_context(np.einsum("nta,na->nt", pre, q), enc, 2.0)
    if name in ("AttAdd", "AttLoc"):
        x = pre + (dec_z @ p["mlp_dec.weight"].T)[:, None]
        if name == "AttLoc":
            x += loc_term(a_prev, p["loc_conv.weight"], p["mlp_att.weight"])
        return softmax_context(np.tanh(x) @ p["gvec.weight"][0] + p["gvec.bias"][0], enc, 2.0)
    ctx = []
    for h in range(heads):
        k_h, v_h = pre[h]
        x = k_h + (dec_z @ p[f"mlp_q.{h}.weight"].T + p[f"mlp_q.{h}.bias"])[:, None]
        x += loc_term(a_prev, p[f"loc_conv.{h}.weight"], p[f"mlp_att.{h}.weight"])
        c_h, _ = softmax_context(np.tanh(x) @ p[f"gvec.{h}.weight"][0] + p[f"gvec.{h}.bias"][0], v_h, 2.0)
        ctx.append(c_h)
    return np.concatenate(ctx, 1) @ p["mlp_o.weight"].T, None


def reference_inputs(case: "EspnetStepCase", inputs: dict, params: dict) -> tuple:
    """What the NumPy and PyTorch peers step on: (pre, enc_rows, valid, dec_z, a_prev), the
    encoder projections computed once per row, as ESPnet's batch beam search keeps them."""
    p = params
    rows = inputs["rows"]
    enc_rows = inputs["enc"][rows]
    valid = np.arange(case.T)[None, :] < inputs["lengths"][rows][:, None]
    a_prev = inputs["a_prev"]
    if case.cls == "AttDot":
        pre = np.tanh(enc_rows @ p["mlp_enc.weight"].T + p["mlp_enc.bias"])
    elif case.cls in ("AttAdd", "AttLoc"):
        pre = enc_rows @ p["mlp_enc.weight"].T + p["mlp_enc.bias"]
    else:
        pre = [(enc_rows @ p[f"mlp_k.{h}.weight"].T, enc_rows @ p[f"mlp_v.{h}.weight"].T) for h in range(case.heads)]
    return pre, enc_rows, valid, inputs["dec_z"], a_prev


# ---- PyTorch -------------------------------------------------------------------------------------


def torch_step(torch, name, p, pre, enc, valid, dec_z, a_prev, heads=1):
    """The same step in PyTorch eager ops, as ESPnet's forward() writes it (tensors as numpy_step)."""
    F_ = torch.nn.functional

    def loc_term(a, w_conv, w_att):
        half = (w_conv.shape[-1] - 1) // 2
        f = F_.conv2d(a.view(a.shape[0], 1, 1, -1), w_conv, padding=(0, half)).squeeze(2).transpose(1, 2)
        return F_.linear(f, w_att)

    def softmax_context(e, values, scaling):
        w = torch.softmax(scaling * e.masked_fill(~valid, float("-inf")), dim=1)
        return torch.sum(values * w.unsqueeze(2), dim=1), w

    if name == "AttDot":
        q = torch.tanh(F_.linear(dec_z, p["mlp_dec.weight"], p["mlp_dec.bias"]))
        return softmax_context(torch.sum(pre * q.unsqueeze(1), dim=2), enc, 2.0)
    if name in ("AttAdd", "AttLoc"):
        x = pre + F_.linear(dec_z, p["mlp_dec.weight"]).unsqueeze(1)
        if name == "AttLoc":
            x = x + loc_term(a_prev, p["loc_conv.weight"], p["mlp_att.weight"])
        e = F_.linear(torch.tanh(x), p["gvec.weight"], p["gvec.bias"]).squeeze(2)
        return softmax_context(e, enc, 2.0)
    ctx = []
    for h in range(heads):
        k_h, v_h = pre[h]
        x = k_h + F_.linear(dec_z, p[f"mlp_q.{h}.weight"], p[f"mlp_q.{h}.bias"]).unsqueeze(1)
        x = x + loc_term(a_prev, p[f"loc_conv.{h}.weight"], p[f"mlp_att.{h}.weight"])
        e = F_.linear(torch.tanh(x), p[f"gvec.{h}.weight"], p[f"gvec.{h}.bias"]).squeeze(2)
        ctx.append(softmax_context(e, v_h, 2.0)[0])
    return F_.linear(torch.cat(ctx, dim=1), p["mlp_o.weight"]), None


# ---- callables for the bench backends ------------------------------------------------------------


def attnkit_state(case: "EspnetStepCase", a_prev: np.ndarray):
    """The step's previous-weights state from the case's a_prev ``[N, T]``: as is for AttLoc, the
    same weights for every head for AttMultiHeadLoc (as the peers use them), None otherwise."""
    if case.cls not in STATEFUL:
        return None
    return np.repeat(a_prev[:, None, :], case.heads, axis=1) if case.multi_head else a_prev


def attnkit_calls(case: "EspnetStepCase", copies: list[dict], params: dict) -> list[Callable[[], object]]:
    att = make_attention(case, params=params)
    calls = []
    for c in copies:
        prepared = att.prepare(c["enc"], c["lengths"])
        state = attnkit_state(case, c["a_prev"])
        calls.append(lambda c=c, prepared=prepared, state=state:
                     att.step(prepared, c["dec_z"], state, rows=c["rows"]))
    return calls


def numpy_calls(case: "EspnetStepCase", copies: list[dict], params: dict) -> list[Callable[[], object]]:
    return [lambda ref=reference_inputs(case, c, params): numpy_step(case.cls, params, *ref, heads=case.heads)
            for c in copies]


def torch_reference_inputs(torch, case: "EspnetStepCase", inputs: dict, params: dict) -> tuple:
    """(weights, pre, enc_rows, valid, dec_z, a_prev) of `reference_inputs` as tensors, sharing
    memory with the NumPy arrays."""
    tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x))
    pre, *rest = reference_inputs(case, inputs, params)
    tpre = [(tensor(k), tensor(v)) for k, v in pre] if isinstance(pre, list) else tensor(pre)
    return ({k: tensor(v) for k, v in params.items()}, tpre, *(tensor(x) for x in rest))


def torch_calls(case: "EspnetStepCase", copies: list[dict], params: dict) -> list[Callable[[], object]]:
    import torch

    calls = []
    for c in copies:
        args = torch_reference_inputs(torch, case, c, params)
        calls.append(lambda args=args: torch_step(torch, case.cls, *args, heads=case.heads))
    return calls
