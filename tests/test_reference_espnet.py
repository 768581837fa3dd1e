"""Check tests/reference_espnet.py against REAL ESPnet (espnet==202511).

Skipped when torch or espnet is not importable.  Install for local runs:
    pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    pip install --no-deps espnet==202511
(``espnet.nets.pytorch_backend.rnn.attentions`` needs only torch + numpy.)

Coverage: all 15 classes, han_mode=False only (han_mode only disables the
encoder-projection cache; the reference never caches, so there is nothing
else to check).  Each run builds the ESPnet module, loads the reference's
random params with load_state_dict(strict=True), resets it, and runs 4
consecutive steps on a padded batch with unsorted lengths and garbage in the
padded frames, feeding each side's own state forward; context and state are
compared at every step (float64: atol 1e-10; float32: the reference run in
float32, atol 2e-5).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
att_mod = pytest.importorskip("espnet.nets.pytorch_backend.rnn.attentions")

from torch_convert import to_np, to_t  # noqa: E402

try:
    from tests import reference_espnet as ref  # noqa: E402
except ImportError:  # tests/ is not a package: import from this file's folder
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference_espnet as ref  # noqa: E402

torch.set_num_threads(1)

ALL = list(ref.STEP_FUNCTIONS)
FP32_INIT = ["AttCov", "AttLoc2D", "AttLocRec", "AttCovLoc", "AttMultiHeadLoc",
             "AttMultiHeadMultiResLoc"]
MULTI = ["AttMultiHeadDot", "AttMultiHeadAdd", "AttMultiHeadLoc", "AttMultiHeadMultiResLoc"]
TOL64 = 1e-10
TOL32 = 2e-5


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def build(cls, E, Dz, A, C, F, H, W, O, Av):
    K = getattr(att_mod, cls)
    if cls == "NoAtt":
        return K()
    if cls in ("AttDot", "AttAdd", "AttCov"):
        return K(E, Dz, A)
    if cls in ("AttLoc", "AttLocRec", "AttCovLoc", "AttForward", "GDCAttLoc"):
        return K(E, Dz, A, C, F)
    if cls == "AttLoc2D":
        return K(E, Dz, A, W, C, F)
    if cls in ("AttMultiHeadDot", "AttMultiHeadAdd"):
        return K(E, Dz, H, A, Av)
    if cls in ("AttMultiHeadLoc", "AttMultiHeadMultiResLoc"):
        return K(E, Dz, H, A, Av, C, F)
    if cls == "AttForwardTA":
        return K(E, Dz, A, C, F, O)
    raise KeyError(cls)


def assert_close(a, b, tol, what):
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, tol, f"{what}[{i}]")
        return
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs {b.shape}"
    np.testing.assert_allclose(a, b, rtol=0, atol=tol, err_msg=what)


def make_inputs(rng, B, T, E, lengths, dtype):
    enc = rng.standard_normal((B, T, E))
    for b, l in enumerate(lengths):
        enc[b, l:] = 7.0 + 5.0 * rng.standard_normal((T - l, E))  # garbage
    return enc.astype(dtype)


def initial_state(cls, lengths, T, B, A, H, W, dtype):
    """Explicit initial states (what ESPnet builds on None, in ``dtype``)."""
    U = ref.uniform_init(lengths, T, dtype)
    return {
        "AttCov": [U],
        "AttCovLoc": [U],
        "AttLoc2D": np.repeat(U[:, None], W, axis=1),
        "AttLocRec": (U, (np.zeros((B, A), dtype), np.zeros((B, A), dtype))),
        "AttMultiHeadLoc": [U] * H,
        "AttMultiHeadMultiResLoc": [U] * H,
        "AttLoc": U,
        "AttForward": ref.one_hot_init(B, T, dtype),
        "AttForwardTA": ref.one_hot_init(B, T, dtype),
        "GDCAttLoc": ref.one_hot_init(B, T, dtype),
    }.get(cls)


def esp_call(mod, cls, enc, lens, dec_z, att_prev, kw, out_prev=None, trans=None):
    if cls == "NoAtt":
        return mod(enc, lens, dec_z, att_prev)
    if cls == "AttForwardTA":
        return mod(enc, lens, dec_z, att_prev, out_prev, **kw)
    if cls == "GDCAttLoc":
        return mod(enc, lens, trans, dec_z, att_prev, **kw)
    return mod(enc, lens, dec_z, att_prev, **kw)


def ref_call(cls, params, enc, lens, dec_z, att_prev, kw, out_prev=None, trans=None, u=None):
    f = ref.STEP_FUNCTIONS[cls]
    if cls == "NoAtt":
        return f(params, enc, lens, dec_z, att_prev)
    if cls == "AttForwardTA":
        return f(params, enc, lens, dec_z, att_prev, out_prev, u=u, **kw)
    if cls == "GDCAttLoc":
        return f(params, enc, lens, trans, dec_z, att_prev, **kw)
    return f(params, enc, lens, dec_z, att_prev, **kw)


def run_compare(cls, *, dtype=np.float64, lengths=(5, 9, 3), E=7, Dz=5, A=6, C=3, F=4,
                H=3, W=3, O=4, Av=None, steps=4, scaling=None, explicit_init=None,
                zero_first_dec=True, windows=None, bw=1, fw=3, seed=0, mod=None):
    """Run ``steps`` consecutive steps on ESPnet and the reference; compare."""
    tol = TOL64 if dtype == np.float64 else TOL32
    rng = np.random.default_rng(seed)
    lengths = list(lengths)
    B, T = len(lengths), max(lengths)
    Av = Av or A
    params = ref.make_params(cls, rng, E, Dz, A, C, F, H, W, O, dtype=dtype, att_dim_v=Av)
    if mod is None:
        mod = build(cls, E, Dz, A, C, F, H, W, O, Av)
    mod = mod.to(torch.float64 if dtype == np.float64 else torch.float32)
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
    mod.reset()
    enc = make_inputs(rng, B, T, E, lengths, dtype)
    enc_t = torch.from_numpy(enc)
    if explicit_init is None:
        explicit_init = dtype == np.float64 and cls in FP32_INIT
    st_r = initial_state(cls, lengths, T, B, A, H, W, dtype) if explicit_init else None
    st_e = to_t(st_r)
    u = None
    kw = {} if scaling is None else {"scaling": scaling}
    with torch.no_grad():
        for i in range(steps):
            dec_z = None if (i == 0 and zero_first_dec) else rng.standard_normal((B, Dz)).astype(dtype)
            out_prev = rng.standard_normal((B, O)).astype(dtype)
            trans = rng.uniform(size=(B, T, 1)).astype(dtype)
            kwi = dict(kw)
            if windows is not None:
                kwi.update(last_attended_idx=windows[i], backward_window=bw, forward_window=fw)
            res = ref_call(cls, params, enc, lengths, dec_z, st_r, kwi, out_prev, trans, u)
            if cls == "AttForwardTA":
                c_r, st_r, u = res
            else:
                c_r, st_r = res
            c_e, st_e = esp_call(mod, cls, enc_t, lengths, to_t(dec_z), st_e, kwi,
                                 to_t(out_prev), to_t(trans))
            what = f"{cls} step {i}"
            assert c_r.dtype == dtype, what
            assert_close(c_r, to_np(c_e), tol, what + " context")
            assert_close(st_r, to_np(st_e), tol, what + " state")
            w = ref.weights_from_state(cls, st_r)
            assert np.all(np.isfinite(w)), what
            if cls == "AttForwardTA":
                assert_close(u, to_np(mod.trans_agent_prob), tol, what + " trans_agent_prob")
    return params, enc


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ALL)
def test_float64_default(cls):
    """Default scaling, F=4 (K=9 = T, > the short lengths 5 and 3), dec_z None first."""
    run_compare(cls)


@pytest.mark.parametrize("cls", ALL)
def test_float64_wide_kernel_scaling(cls):
    """F=10 (K=21 > T=9), non-default scaling (ignored by MH-Dot/Add/MultiResLoc),
    A_v != A_k for multi-head, random dec_z from step 0; module reused across two
    utterances with reset() in between."""
    mod = None
    for seed in (1, 2):
        kw = dict(F=10, scaling=1.7, zero_first_dec=False, Av=4, seed=seed)
        if mod is None:
            mod = build(cls, 7, 5, 6, 3, 10, 3, 3, 4, 4)
        run_compare(cls, mod=mod, **kw)


@pytest.mark.parametrize("cls", ALL)
def test_float32_none_init(cls):
    """float32 modules with att_prev=None (ESPnet's own initial state, the
    float32 U included); reference computes in float32."""
    run_compare(cls, dtype=np.float32, explicit_init=False)


@pytest.mark.parametrize("cls", ["AttForward", "AttForwardTA", "GDCAttLoc", "AttLoc"])
def test_float64_explicit_onehot_or_uniform_init(cls):
    run_compare(cls, explicit_init=True, lengths=(4, 2, 7, 7))


def test_multi_res_loc_zero_width_head():
    """F=2, H=3 -> F_h = 0, 1, 2 (a width-1 kernel)."""
    params, _ = run_compare("AttMultiHeadMultiResLoc", F=2, H=3)
    assert [params[f"loc_conv.{h}.weight"].shape[-1] for h in range(3)] == [1, 3, 5]


@pytest.mark.parametrize("cls", ["AttLoc", "AttForward", "AttForwardTA", "GDCAttLoc"])
@pytest.mark.parametrize("bw,fw", [(1, 3), (2, 2)])
def test_window_constraint_b1(cls, bw, fw):
    """B=1 window (lo <= 0, lo > 0, hi < T, hi >= T are all hit).  For GDC the
    window is the dynamic filter on att_prev."""
    run_compare(cls, lengths=(9,), windows=[0, 3, 6, 8], bw=bw, fw=fw, steps=4)
    run_compare(cls, lengths=(9,), windows=[1, 2, 4, 7], bw=bw, fw=fw, steps=4,
                scaling=1.3, seed=5)


@pytest.mark.parametrize("cls", ["AttLoc", "AttForward", "AttForwardTA", "GDCAttLoc"])
def test_window_constraint_batch_raises(cls):
    rng = np.random.default_rng(0)
    params = ref.make_params(cls, rng, 7, 5, 6, 3, 4, 2, 3, 4)
    enc = make_inputs(rng, 2, 5, 7, [5, 3], np.float64)
    mod = build(cls, 7, 5, 6, 3, 4, 2, 3, 4, 6).double()
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    dz = rng.standard_normal((2, 5))
    a = ref.uniform_init([5, 3], 5)
    extra_e = {"AttForwardTA": (torch.zeros(2, 4),)}.get(cls, ())
    with pytest.raises(NotImplementedError):
        if cls == "GDCAttLoc":
            mod(torch.from_numpy(enc), [5, 3], torch.rand(2, 5, 1, dtype=torch.float64),
                torch.from_numpy(dz), torch.from_numpy(a), last_attended_idx=2)
        else:
            mod(torch.from_numpy(enc), [5, 3], torch.from_numpy(dz), torch.from_numpy(a),
                *extra_e, last_attended_idx=2)
    with pytest.raises(NotImplementedError):
        if cls == "GDCAttLoc":
            ref.gdc_att_loc_step(params, enc, [5, 3], np.ones((2, 5, 1)), dz, a,
                                 last_attended_idx=2)
        elif cls == "AttForwardTA":
            ref.att_forward_ta_step(params, enc, [5, 3], dz, a, np.zeros((2, 4)),
                                    last_attended_idx=2)
        else:
            ref.STEP_FUNCTIONS[cls](params, enc, [5, 3], dz, a, last_attended_idx=2)


def test_gdc_dynamic_filter_mutates_in_espnet_only():
    rng = np.random.default_rng(3)
    params = ref.make_params("GDCAttLoc", rng, 7, 5, 6, 3, 4)
    enc = make_inputs(rng, 1, 9, 7, [9], np.float64)
    mod = build("GDCAttLoc", 7, 5, 6, 3, 4, 1, 1, 1, 6).double()
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    a = np.full((1, 9), 1 / 9)
    a_t = torch.from_numpy(a.copy())
    tt = rng.uniform(size=(1, 9, 1))
    dz = rng.standard_normal((1, 5))
    with torch.no_grad():
        c_e, w_e = mod(torch.from_numpy(enc), [9], torch.from_numpy(tt), torch.from_numpy(dz),
                       a_t, last_attended_idx=4)
    c_r, w_r = ref.gdc_att_loc_step(params, enc, [9], tt, dz, a, last_attended_idx=4)
    assert_close(c_r, to_np(c_e), TOL64, "c")
    assert_close(w_r, to_np(w_e), TOL64, "w")
    assert np.all(a == 1 / 9)  # reference: input untouched
    assert a_t[0, 0].item() == 0 and a_t[0, 3].item() == 1 / 9  # ESPnet: zeroed in place


@pytest.mark.parametrize("cls", ["AttCov", "AttCovLoc"])
def test_coverage_list_espnet_in_place_reference_new(cls):
    rng = np.random.default_rng(4)
    params = ref.make_params(cls, rng, 7, 5, 6, 3, 4)
    lens = [5, 9, 3]
    enc = make_inputs(rng, 3, 9, 7, lens, np.float64)
    mod = build(cls, 7, 5, 6, 3, 4, 1, 1, 1, 6).double()
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    U = ref.uniform_init(lens, 9)
    lst_e = [torch.from_numpy(U.copy())]
    lst_r = [U]
    with torch.no_grad():
        _, out_e = mod(torch.from_numpy(enc), lens, None, lst_e)
    _, out_r = ref.STEP_FUNCTIONS[cls](params, enc, lens, None, lst_r)
    assert out_e is lst_e and len(lst_e) == 2  # ESPnet mutates the caller's list
    assert out_r is not lst_r and len(lst_r) == 1 and len(out_r) == 2
    assert_close(out_r, to_np(out_e), TOL64, "list")


@pytest.mark.parametrize("cls", FP32_INIT)
def test_float64_none_init_raises_in_espnet(cls):
    """Spec 1 dtype quirk: float32 U in float64 modules -> dtype error."""
    rng = np.random.default_rng(0)
    params = ref.make_params(cls, rng, 7, 5, 6, 3, 4, 2, 3, 4)
    mod = build(cls, 7, 5, 6, 3, 4, 2, 3, 4, 6).double()
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    enc = torch.from_numpy(make_inputs(rng, 2, 5, 7, [5, 3], np.float64))
    with pytest.raises(RuntimeError):
        mod(enc, [5, 3], None, None)


def test_noatt_float64_weights_are_float32_rounded():
    rng = np.random.default_rng(0)
    lens = [5, 9, 3]
    enc = make_inputs(rng, 3, 9, 7, lens, np.float64)
    mod = att_mod.NoAtt()
    c_e, w_e = mod(torch.from_numpy(enc), lens, None, None)
    assert to_np(w_e)[2, 0] == np.float64(np.float32(1) / np.float32(3))
    c_r, w_r = ref.no_att_step({}, enc, lens, None, None)
    assert_close(c_r, to_np(c_e), TOL64, "c")
    assert_close(w_r, to_np(w_e), TOL64, "w")
    _, w_exact = ref.no_att_step({}, enc, lens, None, None, float32_init=False)
    assert abs(w_exact[2, 0] - 1 / 3) < 1e-16 and abs(w_exact[2, 0] - w_r[2, 0]) > 1e-9


def test_espnet_cache_ignores_new_encoder_without_reset():
    """Spec 1 caching quirk (why every comparison calls reset())."""
    rng = np.random.default_rng(0)
    params = ref.make_params("AttDot", rng, 7, 5, 6)
    lens = [5, 9, 3]
    enc1 = make_inputs(rng, 3, 9, 7, lens, np.float64)
    enc2 = make_inputs(rng, 3, 9, 7, lens, np.float64)
    mod = build("AttDot", 7, 5, 6, 3, 4, 1, 1, 1, 6).double()
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    dz = rng.standard_normal((3, 5))
    with torch.no_grad():
        mod(torch.from_numpy(enc1), lens, torch.from_numpy(dz), None)
        c_stale, _ = mod(torch.from_numpy(enc2), lens, torch.from_numpy(dz), None)
        mod.reset()
        c_fresh, _ = mod(torch.from_numpy(enc2), lens, torch.from_numpy(dz), None)
    c1, _ = ref.att_dot_step(params, enc1, lens, dz, None)
    c2, _ = ref.att_dot_step(params, enc2, lens, dz, None)
    assert_close(c1, to_np(c_stale), TOL64, "stale")
    assert_close(c2, to_np(c_fresh), TOL64, "fresh")


def test_default_scaling_matches_espnet_signatures():
    import inspect
    for cls, s in ref.DEFAULT_SCALING.items():
        sig = inspect.signature(getattr(att_mod, cls).forward)
        if cls in ("NoAtt", "AttMultiHeadDot", "AttMultiHeadAdd", "AttMultiHeadMultiResLoc"):
            assert s is None and "scaling" not in sig.parameters, cls
        else:
            assert sig.parameters["scaling"].default == s, cls


def test_make_params_names_match_espnet_state_dict():
    for cls in ALL:
        params = ref.make_params(cls, np.random.default_rng(0), 7, 5, 6, 3, 4, 3, 2, 4)
        mod = build(cls, 7, 5, 6, 3, 4, 3, 2, 4, 6)
        sd = mod.state_dict()
        assert set(sd) == set(params), cls
        for k, v in sd.items():
            assert tuple(v.shape) == params[k].shape, (cls, k)
