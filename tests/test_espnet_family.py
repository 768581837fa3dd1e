"""attnkit.espnet (the ESPnet RNN attention family) against the float64 reference tests/reference_espnet.py.

Covers: all 15 classes over multi-step sequences carrying state (float64 to 1e-10, float32 against
the float64 reference), padded batches with unsorted lengths and garbage (finite and NaN) in padded
frames, conv kernels wider than T, rows mapping (beam layout and shuffled rows), the window
constraint, the compat wrappers (state kinds, in-place coverage list, caching and han_mode),
load_state_dict prefixes, the factories, and every error path.
"""
import dataclasses
import types

import numpy as np
import pytest

from attnkit import espnet as ek
from attnkit.espnet import compat

try:
    from tests import reference_espnet as ref
except ImportError:  # tests/ is not a package: import from this file's folder
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference_espnet as ref

ALL = list(ref.STEP_FUNCTIONS)
MULTI = ["AttMultiHeadDot", "AttMultiHeadAdd", "AttMultiHeadLoc", "AttMultiHeadMultiResLoc"]
FORWARD = ["AttForward", "AttForwardTA", "GDCAttLoc"]
TOL64 = 1e-10
TOL32 = 1e-5
D = dict(E=7, Dz=5, A=6, C=3, F=4, H=3, W=3, O=4)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def make(cls, dtype=np.float64, seed=0, F=D["F"], Av=None, module=ek, **opts):
    """(module, float64 params): a core (or compat) module holding ref.make_params weights."""
    d = dict(D, F=F)
    p64 = ref.make_params(cls, np.random.default_rng(seed), d["E"], d["Dz"], d["A"], d["C"], F, d["H"], d["W"],
                          d["O"], att_dim_v=Av)
    p = {k: v.astype(dtype) for k, v in p64.items()}
    args = ref.ctor_args(cls, d["E"], d["Dz"], d["A"], d["C"], F, d["H"], d["W"], d["O"], Av)
    if module is ek:
        return getattr(ek, cls)(*args, dtype=dtype, params=p, **opts), {k: v.astype(np.float64) for k, v in p.items()}
    m = getattr(compat, cls)(*args, dtype=dtype, **opts)
    m.load_state_dict(p)
    return m, {k: v.astype(np.float64) for k, v in p.items()}


def encoder(rng, lengths, dtype=np.float64, garbage="finite", E=D["E"]):
    B, T = len(lengths), max(lengths)
    enc = rng.standard_normal((B, T, E))
    for b, n in enumerate(lengths):
        enc[b, n:] = np.nan if garbage == "nan" else (0.0 if garbage == "zero" else 7 + 5 * rng.standard_normal())
    return enc.astype(dtype)


def ref_step(cls, params, enc, lengths, dec_z, state, extra, **kw):
    """One reference call; returns (context, ESPnet-format state, u or None)."""
    f = ref.STEP_FUNCTIONS[cls]
    if cls == "NoAtt":
        c, s = ref.no_att_step(params, enc, lengths, dec_z, state, float32_init=False)
        return c, s, None
    if cls == "AttForwardTA":
        return f(params, enc, lengths, dec_z, state, extra["out_prev"], u=extra.get("u"), **kw)
    if cls == "GDCAttLoc":
        c, s = f(params, enc, lengths, extra["trans_token"], dec_z, state, **kw)
        return c, s, None
    c, s = f(params, enc, lengths, dec_z, state, **kw)
    return c, s, None


def close(got, want, tol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=what)


def check_state(cls, st, rst, u, tol, what):
    """The core state against the reference's ESPnet-format state."""
    if cls == "NoAtt":
        close(st, rst, tol, what)
    elif ref.STATE_KIND[cls] == "coverage_list":
        assert isinstance(st, ek.CoverageState), what
        close(st.total, sum(rst), tol, what)
    elif cls == "AttLocRec":
        assert isinstance(st, ek.LocRecState), what
        close(st.weights, rst[0], tol, what)
        close(st.h, rst[1][0], tol, what)
        close(st.c, rst[1][1], tol, what)
    elif ref.STATE_KIND[cls] == "heads_list":
        close(st, np.stack(rst, axis=1), tol, what)
    elif cls == "AttForwardTA":
        assert isinstance(st, ek.ForwardTAState), what
        close(st.weights, rst, tol, what)
        close(st.u, u, tol, what)
    else:
        close(st, rst, tol, what)


def run_vs_reference(cls, *, dtype=np.float64, lengths=(5, 9, 3), steps=4, scaling=None, F=D["F"], seed=0,
                     rows=None, garbage="finite", windows=None, Av=None, tol=None, **opts):
    """Steps the core module and the reference side by side (each feeding its own state forward).

    ``rows``: the core attends ``prepare(enc)`` with rows mapping; the reference runs on the
    repeated batch ``enc[rows]``. Garbage "nan" in the core's padded frames is compared with the
    reference on zeroed padding.
    """
    tol = tol or (TOL64 if dtype == np.float64 else TOL32)
    rng = np.random.default_rng(seed + 100)
    m, p = make(cls, dtype, seed, F=F, Av=Av, **opts)
    lengths = list(lengths)
    enc = encoder(rng, lengths, dtype, garbage)
    enc_ref = np.nan_to_num(enc.astype(np.float64), nan=0.0)
    rows_arr = np.arange(len(lengths)) if rows is None else np.asarray(rows)
    enc_ref, lens_ref = enc_ref[rows_arr], [lengths[r] for r in rows_arr]
    N, T = len(rows_arr), max(lengths)
    prep = m.prepare(enc, lengths)
    st = rst = u = None
    kw = {} if scaling is None else {"scaling": scaling}
    for i in range(steps):
        dz = None if i == 0 else rng.standard_normal((N, D["Dz"])).astype(dtype)
        extra = {"out_prev": rng.standard_normal((N, D["O"])).astype(dtype),
                 "trans_token": rng.uniform(size=(N, T, 1)).astype(dtype)}
        kwi = dict(kw)
        if windows is not None:
            kwi.update(last_attended_idx=windows[i])
        core_kw = {k: extra[k] for k in {"AttForwardTA": ["out_prev"], "GDCAttLoc": ["trans_token"]}.get(cls, [])}
        out = m.step(prep, dz, st, rows=rows, **core_kw, **kwi)
        st = out.state
        res = ref_step(cls, p, enc_ref, lens_ref, None if dz is None else dz.astype(np.float64), rst,
                       {k: v.astype(np.float64) for k, v in extra.items()} | {"u": u}, **kwi)
        c_r, rst, u = res
        what = f"{cls} {np.dtype(dtype).name} step {i}"
        assert out.context.dtype == dtype and out.weights.dtype == dtype, what
        close(out.context, c_r, tol, what + " context")
        w_r = ref.weights_from_state(cls, rst) if cls != "NoAtt" else ref.uniform_init(lens_ref, T)
        close(out.weights, w_r, tol, what + " weights")
        check_state(cls, st, rst, u, tol, what + " state")
        assert out.peak.dtype == np.int64 and out.peak.shape == (N,)
        avg = out.weights.mean(axis=1) if out.weights.ndim == 3 else out.weights
        np.testing.assert_array_equal(out.peak, np.argmax(avg, axis=-1))
    return m, prep


# --------------------------------------------------------------------------------------------------
# numbers: every class against the reference
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cls", ALL)
def test_matches_reference(cls, dtype):
    """4 steps, padded batch with unsorted lengths (5, 9, 3) and garbage padding, dec_z None first,
    default scaling; F=4 (K=9 wider than lengths 5 and 3)."""
    run_vs_reference(cls, dtype=dtype)


@pytest.mark.parametrize("cls", ALL)
def test_wide_kernel_scaling_and_value_dim(cls):
    """F=10 (K=21 > T=9), explicit scaling (MH-Dot/Add/MultiResLoc: attnkit honours it, so the
    reference gets the same s through its loc path only; there the default is compared), A_v != A_k."""
    ignores = cls in ("NoAtt", "AttMultiHeadDot", "AttMultiHeadAdd", "AttMultiHeadMultiResLoc")
    run_vs_reference(cls, F=10, scaling=None if ignores else 1.7, Av=4, seed=3, lengths=(4, 9, 9, 1))


@pytest.mark.parametrize("cls", [c for c in ALL if c not in FORWARD])
def test_nan_padding_never_reaches_outputs(cls):
    """NaN in padded frames: only valid frames are read, so results equal the reference's on
    zeroed padding (ESPnet itself returns NaN contexts there: 0 * NaN)."""
    run_vs_reference(cls, garbage="nan", steps=2)


@pytest.mark.parametrize("cls", FORWARD)
def test_forward_family_padding_leak_and_fix(cls):
    """ESPnet's clamp puts weight on padded frames: NaN garbage reaches the context (parity);
    fix_padding_leak=True keeps padded frames at 0 and makes results padding-invariant."""
    rng = np.random.default_rng(5)
    m, _ = make(cls)
    enc = encoder(rng, [5, 9, 3], garbage="nan")
    kw = {"AttForwardTA": {"out_prev": np.zeros((3, D["O"]))},
          "GDCAttLoc": {"trans_token": np.full((3, 9), 0.3)}}.get(cls, {})
    out = m.step(m.prepare(enc, [5, 9, 3]), None, None, **kw)
    assert np.isnan(out.context[0]).all() and np.isfinite(out.context[1]).all()
    assert np.all(out.weights[0, 5:] > 0)

    fixed, _ = make(cls, fix_padding_leak=True)
    prep = fixed.prepare(enc, [5, 9, 3])
    alone = fixed.prepare(np.ascontiguousarray(enc[:1, :5]), [5])
    st = st1 = None
    for i in range(3):
        dz = rng.standard_normal((3, D["Dz"]))
        kw = {"AttForwardTA": {"out_prev": np.ones((3, D["O"]))},
              "GDCAttLoc": {"trans_token": np.full((3, 9), 0.3)}}.get(cls, {})
        kw1 = {k: v[:1, :5] if v.shape[1] == 9 else v[:1] for k, v in kw.items()}
        out = fixed.step(prep, dz, st, **kw)
        out1 = fixed.step(alone, dz[:1], st1, **kw1)
        st, st1 = out.state, out1.state
        assert np.all(out.weights[0, 5:] == 0) and np.all(np.isfinite(out.context))
        close(out.context[:1], out1.context, 1e-12, f"{cls} step {i}")
        close(out.weights[:1, :5], out1.weights, 1e-12, f"{cls} step {i}")


def test_loc_rec_masked_max_pool_is_padding_invariant():
    rng = np.random.default_rng(6)
    enc = encoder(rng, [5, 9, 3])
    for masked in (False, True):
        m, _ = make("AttLocRec", masked_max_pool=masked)
        dz = rng.standard_normal((3, D["Dz"]))
        out = m.step(m.prepare(enc, [5, 9, 3]), dz, None)
        out = m.step(m.prepare(enc, [5, 9, 3]), dz, out.state)
        alone = m.prepare(np.ascontiguousarray(enc[2:, :3]), [3])
        o1 = m.step(alone, dz[2:], None)
        o1 = m.step(alone, dz[2:], o1.state)
        diff = np.abs(out.context[2] - o1.context[0]).max()
        assert (diff < 1e-12) if masked else (diff > 1e-6), (masked, diff)


@pytest.mark.parametrize("cls", ALL)
def test_rows_beam_layout_and_shuffled(cls):
    """N = B * beam rows (row = b * beam + k, ESPnet's layout: one SDPA call for the dot classes),
    then shuffled rows with an utterance left out (per-utterance groups), each against the
    reference run on the repeated batch."""
    run_vs_reference(cls, rows=np.repeat(np.arange(3), 2), steps=3, seed=7)
    run_vs_reference(cls, rows=np.array([1, 0, 1, 1, 0]), steps=2, seed=8)


@pytest.mark.parametrize("cls", ["AttLoc", "AttForward", "AttForwardTA", "GDCAttLoc"])
def test_window_constraint_single_row(cls):
    """B = 1 windows hitting lo <= 0, lo > 0, hi < T and hi >= T (GDC: the dynamic filter on a)."""
    run_vs_reference(cls, lengths=(9,), windows=[0, 3, 6, 8], steps=4)
    run_vs_reference(cls, lengths=(9,), windows=[1, 2, 4, 7], steps=4, scaling=1.3, seed=2)


@pytest.mark.parametrize("cls", ["AttLoc", "AttForward", "AttForwardTA", "GDCAttLoc"])
def test_window_per_row_generalisation(cls):
    """An int array last_attended_idx [N] = each row on its own with an int index."""
    rng = np.random.default_rng(9)
    m, _ = make(cls)
    enc = encoder(rng, [9, 9, 9])
    prep = m.prepare(enc, [9, 9, 9])
    idx = np.array([0, 4, 8])
    dz = rng.standard_normal((3, D["Dz"]))
    kw = {"AttForwardTA": {"out_prev": rng.standard_normal((3, D["O"]))},
          "GDCAttLoc": {"trans_token": rng.uniform(size=(3, 9))}}.get(cls, {})
    both = m.step(prep, dz, None, last_attended_idx=idx, **kw)
    for n in range(3):
        one = m.step(prep, dz[n:n + 1], None, rows=[n], last_attended_idx=int(idx[n]),
                     **{k: v[n:n + 1] for k, v in kw.items()})
        close(both.context[n:n + 1], one.context, 1e-14, f"row {n}")
        close(both.weights[n:n + 1], one.weights, 1e-14, f"row {n}")


@pytest.mark.parametrize("cls", ["AttLoc", "AttForward", "AttForwardTA", "GDCAttLoc"])
def test_window_int_with_several_rows_is_unsupported(cls):
    m, _ = make(cls)
    prep = m.prepare(encoder(np.random.default_rng(0), [5, 3]), [5, 3])
    kw = {"AttForwardTA": {"out_prev": np.zeros((2, D["O"]))}, "GDCAttLoc": {"trans_token": np.ones((2, 5))}}.get(cls, {})
    with pytest.raises(NotImplementedError, match=f"{cls}.step: last_attended_idx as an int needs a single row"):
        m.step(prep, None, None, last_attended_idx=2, **kw)


def test_initial_states_follow_espnet_in_module_dtype():
    rng = np.random.default_rng(0)
    enc = encoder(rng, [3, 6])
    for cls in ALL:
        m, _ = make(cls)
        st = m.initial_state(m.prepare(enc, [3, 6]), rows=[1, 0, 0])
        if cls in ("AttDot", "AttAdd", "AttMultiHeadDot", "AttMultiHeadAdd"):
            assert st is None, cls  # these classes ignore the state
            continue
        arr = {"AttCov": lambda s: s.total, "AttCovLoc": lambda s: s.total, "AttLocRec": lambda s: s.weights,
               "AttForwardTA": lambda s: s.weights}.get(cls, lambda s: s)(st)
        assert arr.dtype == np.float64, cls
        first = arr[1, 0] if arr.ndim == 2 else arr[1, 0, 0]
        assert first == (1.0 if cls in FORWARD else 1 / 3), cls  # exact in float64 (ESPnet: float32 1/3)
    m = make("AttForwardTA")[0]
    assert np.all(m.initial_state(m.prepare(enc, [3, 6])).u == 0.5)


@pytest.mark.parametrize("cls", ALL)
def test_prepared_is_immutable_and_steps_are_pure(cls):
    rng = np.random.default_rng(11)
    m, _ = make(cls)
    enc = encoder(rng, [5, 9, 3])
    prep = m.prepare(enc, [5, 9, 3])
    enc[:] = 0  # the cache holds its own copy
    assert not prep.enc.flags.writeable and not prep.lengths.flags.writeable
    assert prep.keys is None or not prep.keys.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        prep.keys = None
    kw = {"AttForwardTA": {"out_prev": np.ones((3, D["O"]))}, "GDCAttLoc": {"trans_token": np.full((3, 9), .4)}}.get(cls, {})
    out = m.step(prep, None, None, **kw)
    out2 = m.step(prep, rng.standard_normal((3, D["Dz"])), out.state, **kw)
    before = [np.array(x, copy=True) for x in _leaves(out.state)]
    m.step(prep, rng.standard_normal((3, D["Dz"])), out.state, **kw)
    for a, b in zip(before, _leaves(out.state)):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(out2.context).all()


def _leaves(state):
    if isinstance(state, np.ndarray):
        return [state]
    return [x for s in state for x in _leaves(s)] if isinstance(state, tuple) else []


def naive_additive(P, values, lengths, rows, q, att_in, conv_w, conv_proj, loc_bias, gvec_w, scaling):
    """fused_additive_step's contract, written as loops (float64)."""
    N, T = len(rows), P.shape[1]
    w, ctx = np.zeros((N, T)), np.zeros((N, values.shape[2]))
    for n in range(N):
        b, L = rows[n], lengths[rows[n]]
        g = np.zeros((T, P.shape[2]))
        if att_in is not None:
            g = g if loc_bias is None else g + loc_bias
            F = (conv_w.shape[2] - 1) // 2
            f = np.zeros((T, conv_w.shape[0]))
            for t in range(T):
                for j in range(conv_w.shape[2]):
                    if 0 <= t + j - F < T:
                        f[t] += conv_w[:, :, j] @ att_in[n, :, t + j - F]
            g = g + f @ conv_proj.T
        e = np.array([gvec_w @ np.tanh(P[b, t] + q[n] + g[t]) for t in range(L)])
        e = np.exp(scaling * (e - e.max()))
        w[n, :L] = e / e.sum()
        ctx[n] = w[n, :L] @ values[b, :L]
    return ctx, w


@pytest.mark.parametrize("case", ["loc_r2_wide", "loc_no_bias", "no_location"])
def test_fused_additive_step_contract(case):
    """The kernel boundary on its own: R = 2 rows of att_in, K = 2F+1 = 13 > T = 6, C != A,
    shuffled and repeated rows, Ev = 0 (how the Forward family calls it), NaN in padded frames."""
    from attnkit.espnet._kernels import fused_additive_step

    rng = np.random.default_rng(21)
    B, T, A, Ev, C = 3, 6, 4, 5, 3
    lengths = np.array([6, 2, 4])
    rows = np.array([2, 0, 2, 1, 0])
    P, values = rng.standard_normal((B, T, A)), rng.standard_normal((B, T, Ev))
    for b in range(B):
        P[b, lengths[b]:] = values[b, lengths[b]:] = np.nan
    q, gvec = rng.standard_normal((5, A)), rng.standard_normal(A)
    att_in = conv_w = conv_proj = loc_bias = None
    if case != "no_location":
        att_in = rng.uniform(size=(5, 2, T))
        conv_w = rng.standard_normal((C, 2, 13))
        conv_proj = rng.standard_normal((A, C))
        loc_bias = rng.standard_normal(A) if case == "loc_r2_wide" else None
    ctx_r, w_r = naive_additive(P, values, lengths, rows, q, att_in, conv_w, conv_proj, loc_bias, gvec, 1.7)
    out_ctx, out_w = np.full((5, Ev), np.nan), np.full((5, T), np.nan)
    fused_additive_step(P, values, lengths, rows, q, att_in, conv_w, conv_proj, loc_bias, gvec, 1.7, out_ctx, out_w)
    close(out_ctx, ctx_r, 1e-13, case + " context")
    close(out_w, w_r, 1e-13, case + " weights")
    empty = np.empty((5, 0))
    fused_additive_step(P, values[:, :, :0], lengths, rows, q, att_in, conv_w, conv_proj, loc_bias, gvec, 1.7,
                        empty, out_w)
    close(out_w, w_r, 1e-13, case + " weights, Ev = 0")


# --------------------------------------------------------------------------------------------------
# compat wrappers: ESPnet's calling convention, state kinds and caching
# --------------------------------------------------------------------------------------------------

def compat_call(cls, m, enc, lengths, dz, state, extra, **kw):
    if cls == "NoAtt":
        return m(enc, lengths, dz, state)
    if cls == "AttForwardTA":
        return m(enc, lengths, dz, state, extra["out_prev"], **kw)
    if cls == "GDCAttLoc":
        return m(enc, lengths, extra["trans_token"], dz, state, **kw)
    return m(enc, lengths, dz, state, **kw)


def same_structure(got, want, tol, what):
    if isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), what
        for i, (g, w) in enumerate(zip(got, want)):
            same_structure(g, w, tol, f"{what}[{i}]")
    else:
        assert isinstance(got, np.ndarray), what
        close(got, want, tol, what)


@pytest.mark.parametrize("cls", ALL)
def test_compat_matches_reference_with_espnet_state_kinds(cls):
    rng = np.random.default_rng(12)
    m, p = make(cls, module=compat)
    lengths = [5, 9, 3]
    enc = encoder(rng, lengths)
    st = rst = u = None
    for i in range(3):
        dz = None if i == 0 else rng.standard_normal((3, D["Dz"]))
        extra = {"out_prev": rng.standard_normal((3, D["O"])), "trans_token": rng.uniform(size=(3, 9, 1))}
        c, new = compat_call(cls, m, enc, lengths, dz, st, extra)
        if cls == "NoAtt":
            c_r, rst = ref.no_att_step(p, enc, lengths, dz, rst)  # float32-rounded U, as ESPnet
        else:
            c_r, rst, u = ref_step(cls, p, enc, lengths, dz, rst, extra | {"u": u})
        if ref.STATE_KIND[cls] == "coverage_list" and st is not None:
            assert new is st  # appended in place, as ESPnet
        close(c, c_r, TOL64, f"{cls} step {i}")
        same_structure(new, rst, TOL64, f"{cls} step {i} state")
        if cls == "AttForwardTA":
            close(m.trans_agent_prob, u, TOL64, "trans_agent_prob")
        st = new
    if cls == "AttForwardTA":
        m.reset()
        assert m.trans_agent_prob == 0.5


def test_compat_noatt_first_call_with_state_returns_none_context():
    m = compat.NoAtt(dtype=np.float64)
    enc = encoder(np.random.default_rng(0), [2, 4])
    st = np.full((2, 4), 0.25)
    c, s = m(enc, [2, 4], None, st)
    assert c is None and s is st
    c, s = m(enc, [2, 4], None, None)
    c2, s2 = m(enc * 2, [2, 4], None, s)
    assert c2 is c and s2 is s


@pytest.mark.parametrize("cls", ["AttDot", "AttLoc", "AttMultiHeadAdd", "AttCov", "GDCAttLoc"])
def test_compat_cache_is_stale_without_reset_and_fresh_in_han_mode(cls):
    """ESPnet: after the first call the encoder argument is ignored (until reset()); han_mode
    re-projects every call."""
    rng = np.random.default_rng(13)
    enc1, enc2 = encoder(rng, [5, 9, 3]), encoder(rng, [5, 9, 3])
    extra = {"out_prev": None, "trans_token": rng.uniform(size=(3, 9, 1))}
    dz = rng.standard_normal((3, D["Dz"]))
    outs = {}
    copy = lambda st: list(st) if isinstance(st, list) else st  # noqa: E731  (coverage lists grow in place)
    for han in (False, True):
        m, _ = make(cls, module=compat, han_mode=han)
        _, st = compat_call(cls, m, enc1, [5, 9, 3], dz, None, extra)
        outs[han] = compat_call(cls, m, enc2, [5, 9, 3], dz, copy(st), extra)[0]
        m.reset()
        fresh = compat_call(cls, m, enc2, [5, 9, 3], dz, copy(st), extra)[0]
    m1, _ = make(cls, module=compat)
    _, st = compat_call(cls, m1, enc1, [5, 9, 3], dz, None, extra)
    stale = compat_call(cls, m1, enc1, [5, 9, 3], dz, copy(st), extra)[0]
    close(outs[False], stale, 0, "non-han second call uses the first encoder")
    close(outs[True], fresh, 0, "han_mode second call uses the new encoder")
    assert np.abs(outs[True] - outs[False]).max() > 1e-6


def test_compat_rejects_a_new_batch_size_without_reset():
    m, _ = make("AttLoc", module=compat)
    rng = np.random.default_rng(0)
    m(encoder(rng, [5, 3]), [5, 3], None, None)
    with pytest.raises(ValueError, match=r"AttLoc.__call__: enc_hs_pad must have the cached batch size 2"):
        m(encoder(rng, [5, 3, 4]), [5, 3, 4], None, None)


def test_compat_gdc_dynamic_filter_mutates_att_prev_in_place():
    m, p = make("GDCAttLoc", module=compat)
    rng = np.random.default_rng(3)
    enc = encoder(rng, [9])
    a = np.full((1, 9), 1 / 9)
    tt, dz = rng.uniform(size=(1, 9, 1)), rng.standard_normal((1, D["Dz"]))
    c, w = m(enc, [9], tt, dz, a, last_attended_idx=4)
    c_r, w_r = ref.gdc_att_loc_step(p, enc, [9], tt, dz, np.full((1, 9), 1 / 9), last_attended_idx=4)
    close(c, c_r, TOL64, "c")
    assert a[0, 0] == 0 and a[0, 3] == 1 / 9 and a[0, 7] == 0  # window [3, 7), as ESPnet
    core_a = np.full((1, 9), 1 / 9)
    m.core.step(m.prepared, dz, core_a, trans_token=tt, last_attended_idx=4)
    assert np.all(core_a == 1 / 9)  # the core API never mutates


def test_compat_window_constraint_needs_one_row_like_espnet():
    m, _ = make("AttLoc", module=compat)
    enc = encoder(np.random.default_rng(0), [5, 3])
    with pytest.raises(NotImplementedError, match="batch attention constraining is not supported"):
        m(enc, [5, 3], None, None, last_attended_idx=1)


@pytest.mark.parametrize("prefix", ["", "att.0.", "dec.att.0.", "decoder.att_list.0."])
def test_load_state_dict_prefixes(prefix):
    m, p = make("AttMultiHeadLoc", module=compat)
    m2 = compat.AttMultiHeadLoc(D["E"], D["Dz"], D["H"], D["A"], D["A"], D["C"], D["F"], dtype=np.float64)
    m2.load_state_dict({prefix + k: v.tolist() for k, v in p.items()})  # anything np.asarray takes
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(m2.state_dict()[k], v)


def test_load_state_dict_e2e_double_registration_and_prefix_filter():
    m, p = make("AttLoc", module=compat)
    both = {**{"att.0." + k: v for k, v in p.items()}, **{"dec.att.0." + k: v.copy() for k, v in p.items()}}
    m.load_state_dict(both)
    both["dec.att.0.gvec.bias"] = both["dec.att.0.gvec.bias"] + 1
    with pytest.raises(ValueError, match=r"must hold one value per parameter, got two different values for 'gvec.bias'"):
        m.load_state_dict(both)
    model = {"enc.enc.0.weight": np.zeros(3), **{"dec.att.0." + k: v for k, v in p.items()}}
    m.load_state_dict(model, prefix="dec.att.0.")
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['enc.enc.0.weight'\]"):
        m.load_state_dict(model)


@pytest.mark.parametrize(
    "change,exc,pattern",
    [
        (lambda p: {k: v for k, v in p.items() if k != "mlp_att.weight"}, ValueError,
         r"state_dict must hold every parameter, got none for \['mlp_att.weight'\]"),
        (lambda p: p | {"mlp_att.bias": np.zeros(6)}, ValueError,
         r"state_dict must hold only AttLoc's parameters \[.*\], got unexpected key\(s\) \['mlp_att.bias'\]"),
        (lambda p: p | {"mlp_enc.weight": np.zeros((7, 6))}, ValueError,
         r"parameter 'mlp_enc.weight' must have shape \(6, 7\), got \(7, 6\)"),
        (lambda p: p | {"loc_conv.weight": np.zeros((3, 1, 1, 7))}, ValueError,
         r"parameter 'loc_conv.weight' must have shape \(3, 1, 1, 9\), got \(3, 1, 1, 7\)"),
        (lambda p: p | {"gvec.bias": np.zeros(1, np.int64)}, TypeError, "parameter 'gvec.bias' must be a float array"),
        (lambda p: list(p.items()), TypeError, "state_dict must be a mapping"),
    ],
)
def test_load_state_dict_errors(change, exc, pattern):
    m, p = make("AttLoc", module=compat)
    with pytest.raises(exc, match="AttLoc.load_state_dict: " + pattern):
        m.load_state_dict(change(dict(p)))


def test_loaded_weights_invalidate_prepared():
    m, p = make("AttAdd")
    prep = m.prepare(encoder(np.random.default_rng(0), [4, 2]), [4, 2])
    m.load_state_dict(p)
    with pytest.raises(ValueError, match="AttAdd.step: prepared must come from this module's prepare"):
        m.step(prep, None, None)
    with pytest.raises(ValueError, match="prepared must come from this module's prepare"):
        make("AttAdd")[0].step(m.prepare(prep.enc, [4, 2]), None, None)
    with pytest.raises(TypeError, match="AttAdd.step: prepared must be the Prepared returned by prepare"):
        m.step(prep.enc, None, None)


# --------------------------------------------------------------------------------------------------
# factories
# --------------------------------------------------------------------------------------------------

ATYPE_CLASS = {"noatt": "NoAtt", "dot": "AttDot", "add": "AttAdd", "location": "AttLoc", "location2d": "AttLoc2D",
               "location_recurrent": "AttLocRec", "coverage": "AttCov", "coverage_location": "AttCovLoc",
               "multi_head_dot": "AttMultiHeadDot", "multi_head_add": "AttMultiHeadAdd",
               "multi_head_loc": "AttMultiHeadLoc", "multi_head_multi_res_loc": "AttMultiHeadMultiResLoc"}


@pytest.mark.parametrize("atype", sorted(ATYPE_CLASS))
def test_initial_att_every_atype(atype):
    cls = ATYPE_CLASS[atype]
    m = ek.initial_att(atype, D["E"], D["Dz"], D["H"], D["A"], D["W"], D["C"], D["F"], han_mode=True, dtype=np.float64)
    assert type(m) is getattr(compat, cls) and type(m.core) is getattr(ek, cls)
    assert m.han_mode == (atype != "noatt") and m.dtype == np.float64
    want = ref.make_params(cls, np.random.default_rng(0), D["E"], D["Dz"], D["A"], D["C"], D["F"], D["H"], D["W"])
    assert m.core.param_shapes == {k: v.shape for k, v in want.items()}
    assert ek.ATYPES[atype] is getattr(compat, cls)


def test_initial_att_unknown_atype():
    with pytest.raises(ValueError, match=r"initial_att: atype must be one of \['add', .*got str 'locaton'"):
        ek.initial_att("locaton", 7, 5, 2, 6, 3, 3, 4)
    with pytest.raises(ValueError, match="AttLoc: aconv_chans must be an integer >= 1, got -1"):
        ek.initial_att("location", 7, 5, 4, 6, 5, -1, 100)  # espnet1's CLI default aconv_chans


def test_att_for():
    args = types.SimpleNamespace(atype="location", eprojs=7, dunits=5, adim=6, aconv_chans=3, aconv_filts=4)
    mods = ek.att_for(args, num_att=2)
    assert len(mods) == 2 and all(type(x) is compat.AttLoc for x in mods) and mods[0] is not mods[1]
    multi = types.SimpleNamespace(num_encs=2, atype=["dot", "multi_head_add"], eprojs=7, dunits=5, adim=[6, 4],
                                  aheads=[1, 2], awin=[1, 1], aconv_chans=[1, 1], aconv_filts=[1, 1],
                                  han_type="add", han_heads=1, han_dim=3, han_win=1, han_conv_chans=1,
                                  han_conv_filts=1)
    a, b = ek.att_for(multi)
    assert type(a) is compat.AttDot and b.aheads == 2 and b.att_dim_k == 4
    han = ek.att_for(multi, han_mode=True)
    assert type(han) is compat.AttAdd and han.han_mode and han.att_dim == 3
    with pytest.raises(ValueError, match="att_for: args.num_encs must be >= 1, got 0"):
        ek.att_for(types.SimpleNamespace(num_encs=0, atype="dot", eprojs=7, dunits=5, adim=6))


# --------------------------------------------------------------------------------------------------
# error paths of the core API
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "enc_shape,lengths,exc,pattern",
    [
        ((2, 6, 7), [5, 3], ValueError, r"lengths must have max\(lengths\) == T = 6 .* got max 5"),
        ((2, 5, 7), [5, 0], ValueError, r"lengths must be >= 1 .* got \[5, 0\]"),
        ((2, 5, 7), [6, 3], ValueError, r"lengths must lie in \[0, T=5\], got min 3 and max 6"),
        ((2, 5, 7), [5], ValueError, r"lengths must have shape \(2,\)"),
        ((2, 5, 7), [5.0, 3.0], TypeError, "lengths must hold integers"),
        ((2, 5, 6), [5, 3], ValueError, r"enc must be \[B, T, E\] with E = eprojs = 7, got shape \(2, 5, 6\)"),
        ((5, 7), [5], ValueError, r"enc must be 3-D, got shape \(5, 7\)"),
    ],
)
def test_prepare_errors(enc_shape, lengths, exc, pattern):
    m, _ = make("AttLoc")
    with pytest.raises(exc, match="AttLoc.prepare: " + pattern):
        m.prepare(np.zeros(enc_shape), lengths)


def test_prepare_dtype_and_module_errors():
    with pytest.raises(TypeError, match="AttLoc.prepare: enc must have dtype float64 .*got float32"):
        make("AttLoc")[0].prepare(np.zeros((1, 3, 7), np.float32), [3])
    with pytest.raises(TypeError, match="AttDot: dtype must be float32 or float64, got float16"):
        ek.AttDot(7, 5, 6, dtype=np.float16)
    with pytest.raises(TypeError, match="AttDot: att_dim must be an integer, got float 6.0"):
        ek.AttDot(7, 5, 6.0)


@pytest.mark.parametrize("cls", [c for c in ALL if c != "NoAtt"])
@pytest.mark.parametrize("scaling,exc", [(0.0, ValueError), (-2.0, ValueError), (float("nan"), ValueError),
                                         (float("inf"), ValueError), ("2", TypeError)])
def test_bad_scaling(cls, scaling, exc):
    m, _ = make(cls)
    prep = m.prepare(encoder(np.random.default_rng(0), [4, 2]), [4, 2])
    kw = {"AttForwardTA": {"out_prev": np.zeros((2, D["O"]))}, "GDCAttLoc": {"trans_token": np.ones((2, 4))}}.get(cls, {})
    with pytest.raises(exc, match=f"{cls}.step: scaling must be a"):
        m.step(prep, None, None, scaling=scaling, **kw)


def _state_cases():
    U = np.full((2, 4), 0.25)
    return [
        ("AttLoc", [U], TypeError, r"state must be a numpy.ndarray \(\[N, T\] previous attention weights\), got list"),
        ("AttLoc", U[:, :3], ValueError, r"state must have shape \(2, 4\) .*got \(2, 3\)"),
        ("AttLoc", U.astype(np.float32), TypeError, "state must have dtype float64 .*got float32"),
        ("AttForward", U[:1], ValueError, r"state must have shape \(2, 4\)"),
        ("GDCAttLoc", U.T, ValueError, r"state must have shape \(2, 4\)"),
        ("NoAtt", U[:1], ValueError, r"state must have shape \(2, 4\)"),
        ("AttCov", U, TypeError, r"state must be a CoverageState\(total \[N, T\]\) or None"),
        ("AttCovLoc", [U], TypeError, r"state must be a CoverageState"),
        ("AttCov", ek.CoverageState(U[:1]), ValueError, r"state.total must have shape \(2, 4\)"),
        ("AttLoc2D", U, ValueError, r"state must have shape \(2, 3, 4\) \(\[N, att_win, T\]"),
        ("AttLocRec", (U, (np.zeros((2, 6)), np.zeros((2, 6)))), TypeError, r"state must be a LocRecState"),
        ("AttLocRec", ek.LocRecState(U, np.zeros((2, 5)), np.zeros((2, 6))), ValueError,
         r"state.h must have shape \(2, 6\)"),
        ("AttMultiHeadLoc", [U] * 3, TypeError, r"state must be a numpy.ndarray \(\[N, H, T\]"),
        ("AttMultiHeadMultiResLoc", np.stack([U] * 2, 1), ValueError, r"state must have shape \(2, 3, 4\)"),
        ("AttForwardTA", U, TypeError, r"state must be a ForwardTAState\(weights, u\) or None"),
        ("AttForwardTA", ek.ForwardTAState(U, np.zeros(2)), ValueError, r"state.u must have shape \(2, 1\)"),
    ]


@pytest.mark.parametrize("cls,state,exc,pattern", _state_cases())
def test_bad_state(cls, state, exc, pattern):
    m, _ = make(cls)
    prep = m.prepare(encoder(np.random.default_rng(0), [4, 2]), [4, 2])
    kw = {"AttForwardTA": {"out_prev": np.zeros((2, D["O"]))}, "GDCAttLoc": {"trans_token": np.ones((2, 4))}}.get(cls, {})
    with pytest.raises(exc, match=f"{cls}.step: " + pattern):
        m.step(prep, None, state, **kw)


@pytest.mark.parametrize(
    "cls,kwargs,exc,pattern",
    [
        ("AttLoc", {"rows": [0, 2]}, ValueError, r"rows must lie in \[0, B=2\), got min 0 and max 2"),
        ("AttDot", {"rows": [0.0]}, TypeError, r"rows must be a non-empty 1-D integer array"),
        ("AttAdd", {"rows": np.zeros((1, 2), int)}, TypeError, r"rows must be a non-empty 1-D integer array"),
        ("AttLoc", {"dec_z": np.zeros((2, 4))}, ValueError, r"dec_z must have shape \(2, 5\) \(\[N, dunits\]\)"),
        ("AttLoc", {"dec_z": np.zeros((3, 5)), "rows": [0, 1]}, ValueError, r"dec_z must have shape \(2, 5\)"),
        ("AttMultiHeadDot", {"dec_z": np.zeros((2, 5), np.float32)}, TypeError, "dec_z must have dtype float64"),
        ("AttForwardTA", {"out_prev": np.zeros((2, 3))}, ValueError, r"out_prev must have shape \(2, 4\)"),
        ("AttForwardTA", {"out_prev": [[0.0] * 4] * 2}, TypeError, "out_prev must be a numpy.ndarray"),
        ("GDCAttLoc", {"trans_token": np.ones((2, 3))}, ValueError, r"trans_token must have shape \(2, 4\) or \(2, 4, 1\)"),
        ("GDCAttLoc", {"trans_token": np.ones((2, 4), np.float32)}, TypeError, "trans_token must have dtype float64"),
        ("AttLoc", {"last_attended_idx": -1, "rows": [0]}, ValueError, "last_attended_idx must be >= 0, got -1"),
        ("AttLoc", {"last_attended_idx": 6, "rows": [1]}, ValueError,
         r"last_attended_idx must leave a valid frame in the window, got idx 6 \(window \[5, 9\)\) for row 0 of length 2"),
        ("AttForward", {"last_attended_idx": [1, 2, 3]}, TypeError, r"last_attended_idx must be an int or an int array of shape \(2,\)"),
        ("AttForward", {"last_attended_idx": 1, "rows": [0], "forward_window": -1}, ValueError,
         "forward_window must be an integer >= 0, got -1"),
    ],
)
def test_bad_step_arguments(cls, kwargs, exc, pattern):
    m, _ = make(cls)
    prep = m.prepare(encoder(np.random.default_rng(0), [4, 2]), [4, 2])
    kwargs = dict(kwargs)
    dz = kwargs.pop("dec_z", None)
    if cls == "AttForwardTA":
        kwargs.setdefault("out_prev", np.zeros((len(kwargs.get("rows", [0, 1])), D["O"])))
    if cls == "GDCAttLoc":
        kwargs.setdefault("trans_token", np.ones((len(kwargs.get("rows", [0, 1])), 4)))
    with pytest.raises(exc, match=f"{cls}.step: " + pattern):
        m.step(prep, dz, None, **kwargs)


def test_forward_ta_and_gdc_need_their_extra_inputs():
    for cls, name in (("AttForwardTA", "out_prev"), ("GDCAttLoc", "trans_token")):
        m, _ = make(cls)
        with pytest.raises(TypeError, match=name):
            m.step(m.prepare(np.zeros((1, 3, 7)), [3]), None, None)


@pytest.mark.parametrize(
    "cls,call,exc,pattern",
    [
        ("AttLoc", lambda m, e: m(e, [4, 2], np.zeros((2, 4)), None), ValueError, r"dec_z must have 2 x 5 elements"),
        ("AttCov", lambda m, e: m(e, [4, 2], None, np.full((2, 4), .25)), TypeError,
         "att_prev_list must be a non-empty list"),
        ("AttLocRec", lambda m, e: m(e, [4, 2], None, np.zeros((2, 4))), TypeError,
         r"att_prev_states must be \(w, \(h, c\)\) or None"),
        ("AttMultiHeadLoc", lambda m, e: m(e, [4, 2], None, [np.zeros((2, 4))]), TypeError,
         "att_prev must be a list of 3 \\(B, T\\) arrays"),
        ("AttLoc", lambda m, e: m(e, [4, 2], None, [np.zeros((2, 4))]), TypeError, r"att_prev must be an array"),
        ("AttLoc", lambda m, e: m(e, [4, 2], None, None, scaling=0), ValueError, "scaling must be a finite number > 0"),
        ("AttLoc", lambda m, e: m(e, [4, 0], None, None), ValueError, "lengths must be >= 1"),
        ("AttLoc", lambda m, e: m(e, [3, 2], None, None), ValueError, r"max\(lengths\) == T = 4"),
    ],
)
def test_compat_errors(cls, call, exc, pattern):
    m, _ = make(cls, module=compat)
    with pytest.raises(exc, match=pattern):
        call(m, encoder(np.random.default_rng(0), [4, 2]))


def test_noatt_has_no_scaling():
    m = compat.NoAtt()
    with pytest.raises(TypeError):
        m(np.zeros((1, 2, 3), np.float32), [2], None, None, scaling=2.0)
    with pytest.raises(TypeError):
        ek.NoAtt().step(ek.NoAtt().prepare(np.zeros((1, 2, 3), np.float32), [2]), scaling=2.0)
