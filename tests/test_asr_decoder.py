"""attnkit.asr.RNNDecoder: ESPnet's RNN decoder step (spec 3.1-3.2) with every attention class.

The reference is a float64 NumPy decoder written from the spec (attention first, queried with the
bottom layer's previous state; cell input [embedding ; context]; output from the top layer, plus
the context with context_residual), on top of the float64 attention references of
tests/reference_espnet.py.
"""
import numpy as np
import pytest

import reference_espnet as ref
from attnkit import espnet as ek
from attnkit.asr.decoder import DecoderState, RNNDecoder

E, DZ, A, C, F, H, W = 7, 5, 6, 3, 4, 2, 3
V = 6                                  # vocabulary; sos = eos = 5, blank = 0
ALL = list(ref.STEP_FUNCTIONS)
TOL = {np.float64: 1e-10, np.float32: 1e-4}


def attention_args(cls):
    return ref.ctor_args(cls, E, DZ, A, C, F, H, W, V)  # AttForwardTA: out_prev is the fed token's one-hot


def decoder_params(rng, layers, rnn, context_residual, embed_dim=DZ):
    g = (4 if rnn == "lstm" else 3) * DZ
    p = {"embed.weight": rng.standard_normal((V, embed_dim))}
    for layer in range(layers):
        n_in = embed_dim + E if layer == 0 else DZ
        p.update({f"decoder.{layer}.weight_ih": rng.standard_normal((g, n_in)) / np.sqrt(n_in),
                  f"decoder.{layer}.weight_hh": rng.standard_normal((g, DZ)) / np.sqrt(DZ),
                  f"decoder.{layer}.bias_ih": 0.5 * rng.standard_normal(g),
                  f"decoder.{layer}.bias_hh": 0.5 * rng.standard_normal(g)})
    n_out = DZ + E if context_residual else DZ
    p["output.weight"] = 2 * rng.standard_normal((V, n_out)) / np.sqrt(n_out)
    p["output.bias"] = 0.5 * rng.standard_normal(V)
    return p


def build(cls, dtype=np.float64, *, layers=2, rnn="lstm", context_residual=False, embed_dim=DZ, seed=0):
    """(our decoder, float64 decoder params, float64 attention params)."""
    rng = np.random.default_rng(seed)
    att_p = ref.make_params(cls, rng, E, DZ, A, C, F, H, W, V)
    dec_p = decoder_params(rng, layers, rnn, context_residual, embed_dim)
    att = getattr(ek, cls)(*attention_args(cls), dtype=dtype, params={k: v.astype(dtype) for k, v in att_p.items()})
    dec = RNNDecoder({k: v.astype(dtype) for k, v in dec_p.items()}, vocab_size=V, eprojs=E, dunits=DZ,
                     dlayers=layers, rnn_type=rnn, context_residual=context_residual, attention=att, dtype=dtype)
    return dec, dec_p, att_p


def batch(rng, lengths, dtype=np.float64):
    """enc [B, T, E] with finite garbage past each length, GDC's trans_token, token ids [B, L]."""
    B, T = len(lengths), max(lengths)
    enc = rng.standard_normal((B, T, E))
    for b, n in enumerate(lengths):
        enc[b, n:] = 3 + rng.standard_normal((T - n, E))
    tau = rng.uniform(size=(B, T))
    ys = np.concatenate([np.full((B, 1), V - 1), rng.integers(0, V, (B, 3))], axis=1)
    return enc.astype(dtype), tau.astype(dtype), ys


# -- the float64 reference decoder ----------------------------------------------------------------------

def gru_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    gx, gh = x @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    r, z = ref.sigmoid(gx[:, :DZ] + gh[:, :DZ]), ref.sigmoid(gx[:, DZ:2 * DZ] + gh[:, DZ:2 * DZ])
    n = np.tanh(gx[:, 2 * DZ:] + r * gh[:, 2 * DZ:])
    return (1 - z) * n + z * h


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def attend(cls, p, enc, lengths, z0, a, y, tau):
    step = ref.STEP_FUNCTIONS[cls]
    if cls == "NoAtt":
        return step(p, enc, lengths, None, a, float32_init=False)
    if cls == "AttForwardTA":
        w_prev, u = (None, None) if a is None else a
        c, w, u = step(p, enc, lengths, z0, w_prev, np.eye(V)[y], u=u)
        return c, (w, u)
    if cls == "GDCAttLoc":
        return step(p, enc, lengths, tau, z0, a)
    return step(p, enc, lengths, z0, a)


def reference_logp(cls, dec_p, att_p, enc, lengths, tau, ys, layers, rnn, context_residual):
    """log p [B, L, V] of the spec's decoder, teacher-forced on ys (float64)."""
    B, L = ys.shape
    z = [np.zeros((B, DZ)) for _ in range(layers)]
    c = [np.zeros((B, DZ)) for _ in range(layers)]
    a, out = None, []
    for i in range(L):
        ctx, a = attend(cls, att_p, enc.astype(np.float64), lengths, z[0], a, ys[:, i], tau)
        x = np.concatenate([dec_p["embed.weight"][ys[:, i]], ctx], axis=1)
        for layer in range(layers):
            w = [dec_p[f"decoder.{layer}.{n}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            if rnn == "lstm":
                z[layer], c[layer] = ref.lstm_cell(x, z[layer], c[layer], *w)
            else:
                z[layer] = gru_cell(x, z[layer], *w)
            x = z[layer]
        top = np.concatenate([z[-1], ctx], axis=1) if context_residual else z[-1]
        out.append(log_softmax(top @ dec_p["output.weight"].T + dec_p["output.bias"]))
    return np.stack(out, axis=1)


def run_steps(dec, prepared, ys, rows=None):
    state = dec.init_state(prepared, rows)
    logps, weights = [], []
    for i in range(ys.shape[1]):
        logp, state, out = dec.step(prepared, ys[:, i], state, rows)
        logps.append(logp)
        weights.append(out.weights)
    return np.stack(logps, axis=1), np.stack(weights, axis=1), state


# -- tests ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_steps_match_reference(cls, dtype):
    layers, rnn, residual = (2, "lstm", False) if dtype == np.float64 else (1, "gru", True)
    dec, dec_p, att_p = build(cls, dtype, layers=layers, rnn=rnn, context_residual=residual)
    rng = np.random.default_rng(1)
    lengths = [5, 9, 1, 4]                                   # unsorted, one of length 1
    enc, tau, ys = batch(rng, lengths, dtype)
    prepared = dec.prepare(enc, lengths, trans_token=tau if cls == "GDCAttLoc" else None)
    got, _, _ = run_steps(dec, prepared, ys)
    want = reference_logp(cls, dec_p, att_p, enc, lengths, tau.astype(np.float64), ys, layers, rnn, residual)
    np.testing.assert_allclose(got, want, atol=TOL[dtype], rtol=0, err_msg=cls)
    assert got.dtype == dtype


@pytest.mark.parametrize("cls", ALL)
def test_teacher_forced_forward_equals_steps(cls):
    dec, _, _ = build(cls, np.float32, layers=2, context_residual=True, embed_dim=3)
    enc, tau, ys = batch(np.random.default_rng(2), [4, 7, 2], np.float32)
    prepared = dec.prepare(enc, [4, 7, 2], trans_token=tau if cls == "GDCAttLoc" else None)
    steps, weights, _ = run_steps(dec, prepared, ys)
    logp, w = dec.forward(prepared, ys, return_weights=True)
    np.testing.assert_allclose(logp, steps, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(w, weights)
    heads = cls.startswith("AttMultiHead")
    assert w.shape == ((3, 4, H, 7) if heads else (3, 4, 7))
    np.testing.assert_allclose(np.exp(logp).sum(-1), 1, rtol=1e-5)


@pytest.mark.parametrize("cls", ALL)
def test_beam_rows_share_one_prepared_encoder(cls):
    """Rows of a beam (unsorted, repeated utterances) equal the same utterances stepped alone."""
    dec, _, _ = build(cls)
    enc, tau, ys = batch(np.random.default_rng(3), [6, 3, 8], np.float64)
    prepared = dec.prepare(enc, [6, 3, 8], trans_token=tau if cls == "GDCAttLoc" else None)
    alone, _, _ = run_steps(dec, prepared, ys)
    rows = np.array([2, 0, 0, 1, 2, 2])
    beam, _, _ = run_steps(dec, prepared, ys[rows], rows)
    np.testing.assert_allclose(beam, alone[rows], atol=1e-12, rtol=0)


@pytest.mark.parametrize("cls", ALL)
def test_select_reorders_every_state_kind(cls):
    dec, _, _ = build(cls)
    enc, tau, ys = batch(np.random.default_rng(4), [5, 8, 2], np.float64)
    prepared = dec.prepare(enc, [5, 8, 2], trans_token=tau if cls == "GDCAttLoc" else None)
    _, _, state = run_steps(dec, prepared, ys[:, :2])
    index = np.array([2, 0, 0, 1])
    picked = dec.select(state, index)
    assert isinstance(picked, DecoderState) and picked.h[0].shape == (4, DZ)
    logp, _, _ = dec.step(prepared, ys[index, 2], picked, index)
    direct, _, _ = run_steps(dec, prepared, ys[index, :3], index)
    np.testing.assert_allclose(logp, direct[:, 2], atol=1e-12, rtol=0)


def test_from_state_dict_reads_the_configuration_off_the_weights():
    rng = np.random.default_rng(5)
    dec_p = decoder_params(rng, 2, "gru", True, embed_dim=4)
    att_p = ref.make_params("AttLoc", rng, E, DZ, A, C, F, H, W, V)
    sd = {"dec." + k: v for k, v in dec_p.items()}
    sd.update({"dec.att.0." + k: v for k, v in att_p.items()})
    sd["enc.unrelated"] = np.zeros(3)
    dec = RNNDecoder.from_state_dict(sd, prefix="dec.", att_conf={"atype": "location", "adim": A,
                                                                   "aconv_chans": C, "aconv_filts": F},
                                     dtype=np.float64)
    assert (dec.vocab_size, dec.eprojs, dec.dunits, dec.dlayers, dec.rnn_type, dec.context_residual,
            dec.embed_dim) == (V, E, DZ, 2, "gru", True, 4)
    assert isinstance(dec.attention, ek.AttLoc)
    direct = RNNDecoder(dec_p, vocab_size=V, eprojs=E, dunits=DZ, dlayers=2, rnn_type="gru", context_residual=True,
                        attention=ek.AttLoc(E, DZ, A, C, F, dtype=np.float64, params=att_p), dtype=np.float64)
    enc, _, ys = batch(rng, [4, 2])
    np.testing.assert_array_equal(dec.forward(dec.prepare(enc, [4, 2]), ys),
                                  direct.forward(direct.prepare(enc, [4, 2]), ys))


def test_bad_input_raises_typed_errors_naming_the_argument():
    rng = np.random.default_rng(6)
    att = ek.AttLoc(E, DZ, A, C, F, seed=0)
    p = decoder_params(rng, 1, "lstm", False)
    kw = dict(vocab_size=V, eprojs=E, dunits=DZ, dlayers=1, attention=att)
    bad = dict(p, **{"decoder.0.weight_hh": np.zeros((4 * DZ, DZ + 1))})
    with pytest.raises(ValueError, match=r"'decoder.0.weight_hh' must have shape \(20, 5\).*got \(20, 6\)"):
        RNNDecoder(bad, **kw)
    with pytest.raises(ValueError, match="output.bias"):
        RNNDecoder({k: v for k, v in p.items() if k != "output.bias"}, **kw)
    with pytest.raises(ValueError, match="unexpected key.*'decoder.1.weight_ih'"):
        RNNDecoder(dict(p, **{"decoder.1.weight_ih": np.zeros((4 * DZ, DZ))}), **kw)
    with pytest.raises(TypeError, match="attention must have the decoder's dtype"):
        RNNDecoder(p, **dict(kw, attention=ek.AttLoc(E, DZ, A, C, F, dtype=np.float64, seed=0)))
    with pytest.raises(ValueError, match="attention.eprojs"):
        RNNDecoder(p, **dict(kw, attention=ek.AttLoc(E + 1, DZ, A, C, F, seed=0)))
    with pytest.raises(ValueError, match="rnn_type"):
        RNNDecoder(p, **dict(kw, rnn_type="rnn"))
    with pytest.raises(TypeError, match="attention must be"):
        RNNDecoder(p, **dict(kw, attention="location"))
    with pytest.raises(ValueError, match="odim"):
        RNNDecoder(p, **dict(kw, attention=ek.AttForwardTA(E, DZ, A, C, F, V + 1, seed=0)))
    dec = RNNDecoder(p, **kw)
    prepared = dec.prepare(np.zeros((2, 3, E), np.float32), [3, 2])
    state = dec.init_state(prepared)
    with pytest.raises(ValueError, match="tokens must lie in"):
        dec.step(prepared, np.array([0, V]), state)
    with pytest.raises(TypeError, match="tokens"):
        dec.step(prepared, np.array([0.5, 1.0]), state)
    with pytest.raises(ValueError, match="rows"):
        dec.step(prepared, np.array([0, 1, 2]), state, np.array([0, 1]))
    with pytest.raises(ValueError, match="index must lie"):
        dec.select(state, np.array([2]))
    with pytest.raises(ValueError, match="trans_token is only for GDCAttLoc"):
        dec.prepare(np.zeros((1, 3, E), np.float32), [3], trans_token=np.zeros((1, 3), np.float32))
    gdc = RNNDecoder(p, **dict(kw, attention=ek.GDCAttLoc(E, DZ, A, C, F, seed=0)))
    with pytest.raises(ValueError, match="trans_token must be given"):
        gdc.prepare(np.zeros((1, 3, E), np.float32), [3])


# -- ESPnet's own decoder -------------------------------------------------------------------------------

ATYPES = ["noatt", "dot", "add", "location", "location2d", "location_recurrent", "coverage", "coverage_location",
          "multi_head_dot", "multi_head_add", "multi_head_loc", "multi_head_multi_res_loc"]
# ESPnet builds these classes' initial state in float32 (and NoAtt rounds it): float64 runs only the others.
FLOAT64_ATYPES = ["dot", "add", "location", "multi_head_dot", "multi_head_add"]


@pytest.mark.parametrize("atype", ATYPES)
def test_teacher_forced_logits_match_espnet2_rnn_decoder(atype):
    torch = pytest.importorskip("torch")
    rnn_decoder = pytest.importorskip("espnet2.asr.decoder.rnn_decoder")
    conf = {"atype": atype, "adim": A, "aheads": H, "awin": W, "aconv_chans": C, "aconv_filts": F}
    for dtype in [np.float32] + ([np.float64] if atype in FLOAT64_ATYPES else []):
        torch.manual_seed(0)
        esp = rnn_decoder.RNNDecoder(V, E, rnn_type="lstm", num_layers=2, hidden_size=DZ, context_residual=True,
                                     att_conf=conf).eval()
        esp = esp.double() if dtype == np.float64 else esp
        ours = RNNDecoder.from_state_dict({"decoder." + k: v for k, v in esp.state_dict().items()}, att_conf=conf,
                                          dtype=dtype)
        lengths = [5, 9, 3]
        enc, _, ys = batch(np.random.default_rng(7), lengths, dtype)
        with torch.no_grad():
            logits, _ = esp(torch.from_numpy(enc), torch.tensor(lengths), torch.from_numpy(ys),
                            torch.tensor([ys.shape[1]] * 3))
            want = torch.log_softmax(logits, -1).numpy()
        got = ours.forward(ours.prepare(enc, lengths), ys)
        np.testing.assert_allclose(got, want, atol=1e-10 if dtype == np.float64 else 2e-5, rtol=0,
                                   err_msg=f"{atype} {np.dtype(dtype).name}")


def test_gru_decoder_matches_espnet2():
    torch = pytest.importorskip("torch")
    rnn_decoder = pytest.importorskip("espnet2.asr.decoder.rnn_decoder")
    conf = {"atype": "location", "adim": A, "aconv_chans": C, "aconv_filts": F}
    torch.manual_seed(1)
    esp = rnn_decoder.RNNDecoder(V, E, rnn_type="gru", num_layers=3, hidden_size=DZ, att_conf=conf).eval().double()
    ours = RNNDecoder.from_state_dict({"decoder." + k: v for k, v in esp.state_dict().items()}, att_conf=conf,
                                      dtype=np.float64)
    assert (ours.rnn_type, ours.dlayers, ours.context_residual) == ("gru", 3, False)
    enc, _, ys = batch(np.random.default_rng(8), [6, 2], np.float64)
    with torch.no_grad():
        logits, _ = esp(torch.from_numpy(enc), torch.tensor([6, 2]), torch.from_numpy(ys), torch.tensor([4, 4]))
    np.testing.assert_allclose(ours.forward(ours.prepare(enc, [6, 2]), ys), torch.log_softmax(logits, -1).numpy(),
                               atol=1e-10, rtol=0)
