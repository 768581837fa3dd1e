"""attnkit.espnet.compat against REAL ESPnet modules (espnet==202511, torch CPU).

Skipped when torch or espnet is not importable. Each test builds the ESPnet module, loads its
state_dict (torch tensors, under an ESPnet checkpoint prefix) into the compat wrapper, and runs
consecutive calls on both with the same inputs, each side feeding its own state forward:
contexts and states must agree (float64: 1e-10; float32: 2e-5).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
att_mod = pytest.importorskip("espnet.nets.pytorch_backend.rnn.attentions")

from reference_espnet import ctor_args  # noqa: E402
from torch_convert import to_np, to_t  # noqa: E402

from attnkit.espnet import compat  # noqa: E402

torch.set_num_threads(1)

ALL = ["NoAtt", "AttDot", "AttAdd", "AttLoc", "AttCov", "AttLoc2D", "AttLocRec", "AttCovLoc", "AttMultiHeadDot",
       "AttMultiHeadAdd", "AttMultiHeadLoc", "AttMultiHeadMultiResLoc", "AttForward", "AttForwardTA", "GDCAttLoc"]
# ESPnet builds these classes' initial state in float32: float64 modules need an explicit one.
FP32_INIT = ["AttCov", "AttLoc2D", "AttLocRec", "AttCovLoc", "AttMultiHeadLoc", "AttMultiHeadMultiResLoc"]
NO_HAN = ["NoAtt", "AttForward", "AttForwardTA"]
E, DZ, A, C, F, H, W, O = 7, 5, 6, 3, 10, 3, 3, 4  # F=10: kernel 21 wider than T=9


def args(cls):
    return ctor_args(cls, E, DZ, A, C, F, H, W, O)


def pair(cls, dtype, han_mode=False, seed=0):
    torch.manual_seed(seed)
    han = () if cls in NO_HAN else (han_mode,)
    esp = getattr(att_mod, cls)(*args(cls), *han)
    esp = esp.double() if dtype == np.float64 else esp.float()
    with torch.no_grad():  # non-zero biases, so that bias bugs show
        for name, p in esp.named_parameters():
            if p.ndim == 1:
                p.normal_(0, 0.5)
    ours = getattr(compat, cls)(*args(cls), *han, dtype=dtype)
    ours.load_state_dict({"dec.att.0." + k: v for k, v in esp.state_dict().items()})
    return esp, ours


def close(got, want, tol, what):
    if isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), what
        for i, (g, w) in enumerate(zip(got, want)):
            close(g, w, tol, f"{what}[{i}]")
        return
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=0, atol=tol,
                               err_msg=what)


def call(cls, m, enc, lens, dz, st, out_prev, trans, **kw):
    if cls == "NoAtt":
        return m(enc, lens, dz, st)
    if cls == "AttForwardTA":
        return m(enc, lens, dz, st, out_prev, **kw)
    if cls == "GDCAttLoc":
        return m(enc, lens, trans, dz, st, **kw)
    return m(enc, lens, dz, st, **kw)


def explicit_init(cls, lengths, T, dtype):
    B = len(lengths)
    U = (np.arange(T)[None] < np.array(lengths)[:, None]) / np.array(lengths, dtype)[:, None]
    U = U.astype(dtype)
    return {"AttCov": [U], "AttCovLoc": [U], "AttLoc2D": np.repeat(U[:, None], W, 1),
            "AttLocRec": (U, (np.zeros((B, A), dtype), np.zeros((B, A), dtype))),
            "AttMultiHeadLoc": [U] * H, "AttMultiHeadMultiResLoc": [U] * H}.get(cls)


def run(cls, dtype, *, lengths=(5, 9, 3), steps=3, han_mode=False, new_enc_each_step=False, windows=None,
        scaling=None, seed=0):
    tol = 1e-10 if dtype == np.float64 else 2e-5
    rng = np.random.default_rng(seed)
    esp, ours = pair(cls, dtype, han_mode, seed)
    lengths = list(lengths)
    B, T = len(lengths), max(lengths)
    st = explicit_init(cls, lengths, T, dtype) if dtype == np.float64 else None
    st_e = to_t(st)
    kw = {} if scaling is None else {"scaling": scaling}
    with torch.no_grad():
        for i in range(steps):
            if i == 0 or new_enc_each_step:
                enc = rng.standard_normal((B, T, E))
                for b, n in enumerate(lengths):
                    enc[b, n:] = 7 + 3 * rng.standard_normal((T - n, E))
                enc = enc.astype(dtype)
            dz = None if i == 0 else rng.standard_normal((B, DZ)).astype(dtype)
            out_prev = rng.standard_normal((B, O)).astype(dtype)
            trans = rng.uniform(size=(B, T, 1)).astype(dtype)
            kwi = dict(kw)
            if windows is not None:
                kwi["last_attended_idx"] = windows[i]
            c, st = call(cls, ours, enc, lengths, dz, st, out_prev, trans, **kwi)
            c_e, st_e = call(cls, esp, to_t(enc), lengths, to_t(dz), st_e, to_t(out_prev), to_t(trans), **kwi)
            what = f"{cls} {np.dtype(dtype).name} step {i}"
            close(c, to_np(c_e), tol, what + " context")
            close(st, to_np(st_e), tol, what + " state")
            if cls == "AttForwardTA":
                close(ours.trans_agent_prob, to_np(esp.trans_agent_prob), tol, what + " trans_agent_prob")
    return ours, esp


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cls", ALL)
def test_compat_equals_espnet(cls, dtype):
    run(cls, dtype)


@pytest.mark.parametrize("cls", [c for c in ALL if c not in ("NoAtt",)])
def test_compat_equals_espnet_new_encoder_every_call(cls):
    """Without han_mode both sides ignore the new encoder (stale cache); with it both re-project."""
    run(cls, np.float64, new_enc_each_step=True, scaling=None if cls.startswith("AttMulti") else 1.3, seed=1)
    if cls not in NO_HAN:
        run(cls, np.float64, new_enc_each_step=True, han_mode=True, seed=2)


@pytest.mark.parametrize("cls", ["AttLoc", "AttForward", "AttForwardTA", "GDCAttLoc"])
def test_compat_window_equals_espnet(cls):
    run(cls, np.float64, lengths=(9,), steps=4, windows=[0, 3, 6, 8])


def test_in_place_quirks_match_espnet():
    for cls in ("AttCov", "AttCovLoc"):
        esp, ours = pair(cls, np.float32)
        enc = np.random.default_rng(0).standard_normal((2, 4, E)).astype(np.float32)
        lst, lst_e = [np.full((2, 4), 0.25, np.float32)], [torch.full((2, 4), 0.25)]
        with torch.no_grad():
            assert esp(torch.from_numpy(enc), [4, 4], None, lst_e) [1] is lst_e
        assert ours(enc, [4, 4], None, lst)[1] is lst and len(lst) == len(lst_e) == 2
    esp, ours = pair("GDCAttLoc", np.float64)
    rng = np.random.default_rng(1)
    enc, tt, dz = rng.standard_normal((1, 9, E)), rng.uniform(size=(1, 9, 1)), rng.standard_normal((1, DZ))
    a, a_e = np.full((1, 9), 1 / 9), torch.full((1, 9), 1 / 9, dtype=torch.float64)
    with torch.no_grad():
        esp(torch.from_numpy(enc), [9], torch.from_numpy(tt), torch.from_numpy(dz), a_e, last_attended_idx=4)
    ours(enc, [9], tt, dz, a, last_attended_idx=4)
    np.testing.assert_array_equal(a, a_e.numpy())
    esp, ours = pair("NoAtt", np.float64)
    with torch.no_grad():
        assert esp(torch.zeros(1, 3, E, dtype=torch.float64), [3], None, torch.zeros(1, 3))[0] is None
    assert ours(np.zeros((1, 3, E)), [3], None, np.zeros((1, 3)))[0] is None


def test_factory_modules_load_espnet_factory_state_dicts():
    from attnkit.espnet import initial_att

    for atype in ("noatt", "dot", "add", "location", "location2d", "location_recurrent", "coverage",
                  "coverage_location", "multi_head_dot", "multi_head_add", "multi_head_loc",
                  "multi_head_multi_res_loc"):
        esp = att_mod.initial_att(atype, E, DZ, H, A, W, C, F)
        ours = initial_att(atype, E, DZ, H, A, W, C, F)
        assert type(ours).__name__ == type(esp).__name__
        ours.load_state_dict({"decoder.att_list.0." + k: v for k, v in esp.state_dict().items()})
