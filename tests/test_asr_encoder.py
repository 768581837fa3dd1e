"""attnkit.asr encoders (GlobalMVN, Conv2dSubsampling, VGG2L, packed RNNs, RNN/RNNP, RNNEncoder)
against float64 per-utterance references written here from ESPnet's definitions, and (where
torch and espnet are installed) against ESPnet's own modules with random weights.

Batches are padded with NaN and have unsorted lengths, including length 1 (or the shortest
length an encoder accepts): every utterance must come out as if it were alone.
"""
import math

import numpy as np
import pytest

from attnkit import UnsupportedError
from attnkit.asr.encoder import RNN, RNNP, RNNEncoder, espnet1_encoder_conf
from attnkit.asr.normalize import GlobalMVN
from attnkit.asr.rnn import PackedRNN, packed_rnn_shapes
from attnkit.asr.subsampling import Conv2dSubsampling, VGG2L
from conftest import assert_close


def random_params(shapes, rng, scale=0.4):
    return {k: rng.standard_normal(s) * scale for k, s in shapes.items()}


def padded_batch(rng, lengths, features, frames=None):
    """x [B, T, F] float64 with NaN past each length."""
    frames = frames or max(lengths)
    x = rng.standard_normal((len(lengths), frames, features))
    for b, n in enumerate(lengths):
        x[b, n:] = np.nan
    return x


# -- float64 references (one utterance at a time) ------------------------------------------------

def ref_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def ref_cell_sequence(x, w_ih, w_hh, b_ih, b_hh, cell, reverse):
    """One direction of torch.nn.LSTM / GRU over x [T, I] from a zero state -> [T, H]
    (PyTorch's documented equations: LSTM gates i, f, g, o; GRU r, z, n)."""
    H = w_hh.shape[1]
    h, c = np.zeros(H), np.zeros(H)
    out = np.zeros((x.shape[0], H))
    for t in (range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])):
        gi, gh = w_ih @ x[t] + b_ih, w_hh @ h + b_hh
        if cell == "lstm":
            g = gi + gh
            i, f, o = ref_sigmoid(g[:H]), ref_sigmoid(g[H:2 * H]), ref_sigmoid(g[3 * H:])
            c = f * c + i * np.tanh(g[2 * H:3 * H])
            h = o * np.tanh(c)
        else:
            r, z = ref_sigmoid(gi[:H] + gh[:H]), ref_sigmoid(gi[H:2 * H] + gh[H:2 * H])
            n = np.tanh(gi[2 * H:] + r * gh[2 * H:])
            h = (1 - z) * n + z * h
        out[t] = h
    return out


def ref_torch_rnn(x, p, num_layers, bidirectional, cell):
    """A multi-layer (bi)directional torch RNN on one utterance x [L, I] -> [L, D*H]."""
    for k in range(num_layers):
        outs = [ref_cell_sequence(x, p[f"weight_ih_l{k}{s}"], p[f"weight_hh_l{k}{s}"], p[f"bias_ih_l{k}{s}"],
                                  p[f"bias_hh_l{k}{s}"], cell, reverse=bool(s))
                for s in (("", "_reverse") if bidirectional else ("",))]
        x = np.concatenate(outs, axis=1)
    return x


def ref_conv2d(x, w, b, stride, pad):
    """torch.nn.Conv2d on one map x [Cin, T, F] -> [Cout, T', F'] (cross-correlation)."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    t_out, f_out = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    y = np.zeros((w.shape[0], t_out, f_out)) + b[:, None, None]
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + stride * (t_out - 1) + 1:stride, j:j + stride * (f_out - 1) + 1:stride]
            y += np.einsum("oc,ctf->otf", w[:, :, i, j], patch)
    return y


def ref_max_pool_ceil(x):
    """2x2 max-pool, stride 2, ceil mode, on [C, T, F]: a window covers the cells that exist."""
    C, T, F = x.shape
    y = np.empty((C, math.ceil(T / 2), math.ceil(F / 2)))
    for t in range(y.shape[1]):
        for f in range(y.shape[2]):
            y[:, t, f] = x[:, 2 * t:2 * t + 2, 2 * f:2 * f + 2].max(axis=(1, 2))
    return y


def ref_conv2d_subsampling(x, p, units, positional_encoding):
    """ESPnet's Conv2dSubsampling on one utterance x [L, F] -> [((L-1)//2-1)//2, U]."""
    h = np.maximum(ref_conv2d(x[None], p["conv.0.weight"], p["conv.0.bias"], 2, 0), 0)
    h = np.maximum(ref_conv2d(h, p["conv.2.weight"], p["conv.2.bias"], 2, 0), 0)
    y = h.transpose(1, 0, 2).reshape(h.shape[1], -1) @ p["out.0.weight"].T + p["out.0.bias"]
    if positional_encoding:
        # ESPnet builds its table in float32 (angles and values), whatever the model's dtype.
        pos = np.arange(y.shape[0], dtype=np.float32)[:, None]
        div = np.exp(np.arange(0, units, 2, dtype=np.float32) * np.float32(-(math.log(10000.0) / units)))
        pe = np.zeros(y.shape, np.float32)
        pe[:, 0::2], pe[:, 1::2] = np.sin(np.float64(pos * div)), np.cos(np.float64(pos * div))
        y = y * math.sqrt(units) + pe
    return y


def ref_vgg2l(x, p, in_channel=1):
    """ESPnet's VGG2L on one utterance x [L, D] -> [ceil(ceil(L/2)/2), 128 * F'']."""
    h = x.reshape(x.shape[0], in_channel, -1).transpose(1, 0, 2)
    for block in ("conv1", "conv2"):
        for layer in ("_1", "_2"):
            h = np.maximum(ref_conv2d(h, p[f"{block}{layer}.weight"], p[f"{block}{layer}.bias"], 1, 1), 0)
        h = ref_max_pool_ceil(h)
    return h.transpose(1, 0, 2).reshape(h.shape[1], -1)


def ref_rnn_layer(x, p, elayers, typ):
    """ESPnet's RNN on one utterance: tanh(l_last(BiRNN(x)))."""
    ys = ref_torch_rnn(x, {k[6:]: v for k, v in p.items() if k.startswith("nbrnn.")}, elayers,
                       typ.startswith("b"), typ.lstrip("b"))
    return np.tanh(ys @ p["l_last.weight"].T + p["l_last.bias"])


def ref_rnnp_layer(x, p, elayers, typ, subsample):
    """ESPnet's RNNP on one utterance: per layer RNN, frames ::s, bt (tanh but the last)."""
    name = "birnn" if typ.startswith("b") else "rnn"
    for i in range(elayers):
        local = {k[len(f"{name}{i}."):]: v for k, v in p.items() if k.startswith(f"{name}{i}.")}
        ys = ref_torch_rnn(x, local, 1, typ.startswith("b"), typ.lstrip("b"))
        s = subsample[i]
        if s > 1:
            ys = ys[::s][: (ys.shape[0] + 1) // s]
        x = ys @ p[f"bt{i}.weight"].T + p[f"bt{i}.bias"]
        if i < elayers - 1:
            x = np.tanh(x)
    return x


def ref_encoder(x, params, encoder, conf):
    """RNNEncoder / VGGRNNEncoder on one utterance x [L, F] -> [L', P]."""
    c = {**conf}
    sub = lambda prefix: {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    rnn_prefix = "enc.0."
    if encoder == "vgg_rnn":
        x, rnn_prefix = ref_vgg2l(x, sub("enc.0."), c.get("in_channel", 1)), "enc.1."
    elif c.get("input_layer") == "conv2d":
        x = ref_conv2d_subsampling(x, sub("embed."), c["input_layer_units"],
                                   c.get("input_layer_positional_encoding", False))
    typ = ("b" if c["bidirectional"] else "") + c["rnn_type"]
    if c["use_projection"]:
        factors = list(c.get("subsample") or [])[: c["num_layers"]] if encoder == "rnn" else []
        factors += [1] * (c["num_layers"] - len(factors))
        return ref_rnnp_layer(x, sub(rnn_prefix), c["num_layers"], typ, factors)
    return ref_rnn_layer(x, sub(rnn_prefix), c["num_layers"], typ)


def check_batch(got, got_lengths, refs, dtype, what):
    """Each utterance equals its reference on its valid frames and is exactly 0 after."""
    assert got.shape[1] == max(r.shape[0] for r in refs), what
    for b, ref in enumerate(refs):
        assert got_lengths[b] == ref.shape[0], (what, b)
        assert_close(got[b, : ref.shape[0]], ref, dtype, f"{what}, utterance {b}")
        assert np.all(got[b, ref.shape[0]:] == 0), (what, b)


DTYPES = [np.float32, np.float64]


# -- layers against the references ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell,bidirectional", [("lstm", True), ("lstm", False), ("gru", True), ("gru", False)])
@pytest.mark.parametrize("hidden", [7, 19])  # LSTM: the C++ layer's vector tail, and a full vector plus one
def test_packed_rnn_matches_reference(isa, rng, dtype, cell, bidirectional, hidden):
    params = random_params(packed_rnn_shapes(5, hidden, 3, bidirectional, cell), rng)
    lengths = [5, 9, 1, 7]
    x = padded_batch(rng, lengths, 5, frames=11)
    rnn = PackedRNN(params, input_size=5, hidden_size=hidden, num_layers=3, bidirectional=bidirectional,
                    rnn_type=cell, dtype=dtype)
    y = rnn(x.astype(dtype), np.array(lengths))
    refs = [ref_torch_rnn(x[b, :n], params, 3, bidirectional, cell) for b, n in enumerate(lengths)]
    check_batch(y, lengths, refs, dtype, f"PackedRNN {cell} bidirectional={bidirectional}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("positional_encoding", [False, True])
def test_conv2d_subsampling_matches_reference(rng, dtype, positional_encoding):
    # channels != units (the demo model's layout), odd feature count, the shortest length 7.
    params = random_params(Conv2dSubsampling.shapes(23, 4, 6), rng)
    layer = Conv2dSubsampling(params, idim=23, channels=4, units=6, positional_encoding=positional_encoding,
                              dtype=dtype)
    lengths = [12, 30, 7, 20]
    x = padded_batch(rng, lengths, 23, frames=33)
    y, out_lengths = layer(x.astype(dtype), lengths)
    refs = [ref_conv2d_subsampling(x[b, :n], params, 6, positional_encoding) for b, n in enumerate(lengths)]
    check_batch(y, out_lengths, refs, dtype, "Conv2dSubsampling")
    assert out_lengths.tolist() == [((n - 1) // 2 - 1) // 2 for n in lengths]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_channel,idim", [(1, 13), (2, 10)])
def test_vgg2l_matches_reference(rng, dtype, in_channel, idim):
    params = random_params(VGG2L.shapes(in_channel), rng, scale=0.1)
    layer = VGG2L(params, idim=idim, in_channel=in_channel, dtype=dtype)
    lengths = [6, 11, 1, 3]
    x = padded_batch(rng, lengths, idim, frames=12)
    y, out_lengths = layer(x.astype(dtype), lengths)
    refs = [ref_vgg2l(x[b, :n], params, in_channel) for b, n in enumerate(lengths)]
    check_batch(y, out_lengths, refs, dtype, "VGG2L")
    assert y.shape[2] == VGG2L.output_size(idim, in_channel)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_mvn(rng, dtype):
    mean, std = rng.standard_normal(6), rng.random(6) + 0.5
    mvn = GlobalMVN({"mean": mean, "std": std}, size=6, dtype=dtype)
    x = padded_batch(rng, [4, 1, 3], 6)
    before = x.copy()
    y, lengths = mvn(x.astype(dtype), [4, 1, 3])
    for b, n in enumerate([4, 1, 3]):
        assert_close(y[b, :n], (x[b, :n] - mean) / std, dtype, "GlobalMVN")
        assert np.all(y[b, n:] == 0)
    np.testing.assert_array_equal(x, before)  # ESPnet subtracts in place; attnkit does not
    y, _ = GlobalMVN({"mean": mean, "std": std}, size=6, norm_vars=False, dtype=dtype)(x[:1, :4].astype(dtype))
    assert_close(y[0], x[0, :4] - mean, dtype, "GlobalMVN norm_vars=False")


ENCODER_CASES = {
    "blstmp-subsample": ("rnn", dict(rnn_type="lstm", bidirectional=True, use_projection=True, num_layers=3,
                                     hidden_size=6, output_size=5, subsample=[2, 3, 1]), [9, 5, 13, 6]),
    "gru-no-projection": ("rnn", dict(rnn_type="gru", bidirectional=False, use_projection=False, num_layers=2,
                                      hidden_size=6, output_size=5, subsample=None), [9, 1, 13, 4]),
    "conv2d-blstm": ("rnn", dict(rnn_type="lstm", bidirectional=True, use_projection=False, num_layers=2,
                                 hidden_size=5, output_size=4, subsample=None, input_layer="conv2d",
                                 input_layer_channels=3, input_layer_units=6), [12, 7, 25, 8]),
    "vgg-blstmp": ("vgg_rnn", dict(rnn_type="lstm", bidirectional=True, use_projection=True, num_layers=2,
                                   hidden_size=5, output_size=4), [9, 1, 13, 4]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(ENCODER_CASES))
def test_rnn_encoder_matches_reference(rng, dtype, case):
    encoder, conf, lengths = ENCODER_CASES[case]
    idim = 11
    params = random_params(RNNEncoder.shapes(encoder, conf, idim), rng, scale=0.2 if encoder == "vgg_rnn" else 0.4)
    model = RNNEncoder(params, encoder=encoder, input_size=idim, conf=conf, dtype=dtype)
    x = padded_batch(rng, lengths, idim, frames=max(lengths) + 2)
    y, out_lengths = model(x.astype(dtype), np.array(lengths))
    refs = [ref_encoder(x[b, :n], params, encoder, conf) for b, n in enumerate(lengths)]
    check_batch(y, out_lengths, refs, dtype, case)
    np.testing.assert_array_equal(out_lengths, model.output_lengths(lengths))


def test_rnn_and_rnnp_layers_alone(rng):
    params = random_params(RNN.shapes(4, 2, 3, 5, "bgru"), rng)
    y, lengths = RNN(params, idim=4, elayers=2, cdim=3, hdim=5, typ="bgru", dtype=np.float64)(
        padded_batch(rng, [3, 1], 4), [3, 1])
    assert y.shape == (2, 3, 5) and lengths.tolist() == [3, 1]
    params = random_params(RNNP.shapes(4, 2, 3, 5, "lstm"), rng)
    y, lengths = RNNP(params, idim=4, elayers=2, cdim=3, hdim=5, subsample=[3, 1], typ="lstm", dtype=np.float64)(
        padded_batch(rng, [4, 2], 4), [4, 2])
    assert lengths.tolist() == [(4 + 1) // 3, (2 + 1) // 3] and y.shape == (2, 1, 5)


def test_espnet1_etypes_map_to_encoders():
    assert espnet1_encoder_conf("vggblstmp", 3, 6, 5, [1, 1, 1, 1]) == ("vgg_rnn", dict(
        rnn_type="lstm", bidirectional=True, use_projection=True, num_layers=3, hidden_size=6, output_size=5))
    assert espnet1_encoder_conf("gru", 2, 6, 5)[1]["bidirectional"] is False
    assert espnet1_encoder_conf("blstmp", 2, 6, 5, [1, 2, 2])[1]["subsample"] == [2, 2]
    with pytest.raises(UnsupportedError, match="etype"):
        espnet1_encoder_conf("transformer", 2, 6, 5)
    with pytest.raises(UnsupportedError, match=r"subsample\[0\]"):
        espnet1_encoder_conf("blstmp", 2, 6, 5, [2, 1, 1])


# -- errors --------------------------------------------------------------------------------------

def test_encoder_errors_name_the_problem(rng):
    encoder, conf, _ = ENCODER_CASES["conv2d-blstm"]
    shapes = RNNEncoder.shapes(encoder, conf, 11)
    params = random_params(shapes, rng)
    bad = dict(params, **{"enc.0.l_last.weight": np.zeros((4, 3))})
    with pytest.raises(ValueError, match=r"'enc.0.l_last.weight' must have shape \(4, 10\), got \(4, 3\)"):
        RNNEncoder(bad, encoder=encoder, input_size=11, conf=conf)
    missing = {k: v for k, v in params.items() if k != "embed.conv.0.bias"}
    with pytest.raises(ValueError, match=r"missing \['embed.conv.0.bias'\]"):
        RNNEncoder(missing, encoder=encoder, input_size=11, conf=conf)
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        RNNEncoder(dict(params, extra=np.zeros(1)), encoder=encoder, input_size=11, conf=conf)
    model = RNNEncoder(params, encoder=encoder, input_size=11, conf=conf)
    with pytest.raises(ValueError, match=r"lengths must be >= 7"):
        model(np.zeros((2, 9, 11), np.float32), [9, 6])
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, 11\]"):
        model(np.zeros((2, 9, 10), np.float32), [9, 9])
    with pytest.raises(TypeError, match="x must"):
        model([[1.0]], [1])
    with pytest.raises(UnsupportedError, match=r"unsupported key\(s\) \['num_blocks'\]"):
        RNNEncoder(params, encoder=encoder, input_size=11, conf=dict(conf, num_blocks=3))
    with pytest.raises(UnsupportedError, match="encoder must be one of"):
        RNNEncoder(params, encoder="conformer", input_size=11, conf=conf)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        RNNEncoder(params, encoder=encoder, input_size=11, conf=conf, dtype=np.float16)


# -- ESPnet's own modules ------------------------------------------------------------------------

def _espnet_state(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _espnet_per_utterance(torch, module, x, lengths, dtype):
    """ESPnet's encoder run on each utterance alone (its inference path): list of [L', P]."""
    outs = []
    for b, n in enumerate(lengths):
        xb = torch.from_numpy(np.ascontiguousarray(x[b:b + 1, :n], dtype))
        y, out_lengths, _ = module(xb, torch.tensor([n]))
        outs.append(y[0, : int(out_lengths[0])].detach().numpy().astype(np.float64))
    return outs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["espnet2-rnn-proj", "espnet2-rnn", "espnet2-vgg", "espnet2-gru-uni"])
def test_espnet2_encoders_match_espnet(rng, dtype, case):
    torch = pytest.importorskip("torch")
    pytest.importorskip("espnet2")
    from espnet2.asr.encoder.rnn_encoder import RNNEncoder as EspnetRNNEncoder
    from espnet2.asr.encoder.vgg_rnn_encoder import VGGRNNEncoder

    torch.manual_seed(0)
    confs = {
        "espnet2-rnn-proj": ("rnn", dict(rnn_type="lstm", use_projection=True, num_layers=3, hidden_size=6,
                                         output_size=5, subsample=[2, 2])),
        "espnet2-rnn": ("rnn", dict(rnn_type="lstm", use_projection=False, num_layers=2, hidden_size=6,
                                    output_size=5)),
        "espnet2-vgg": ("vgg_rnn", dict(rnn_type="gru", use_projection=True, num_layers=2, hidden_size=6,
                                        output_size=5)),
        "espnet2-gru-uni": ("rnn", dict(rnn_type="gru", bidirectional=False, use_projection=True, num_layers=2,
                                        hidden_size=6, output_size=5)),
    }
    encoder, conf = confs[case]
    reference = (VGGRNNEncoder if encoder == "vgg_rnn" else EspnetRNNEncoder)(9, **conf).eval()
    reference = reference.double() if dtype == np.float64 else reference
    ours = RNNEncoder(_espnet_state(reference), encoder=encoder, input_size=9, conf=conf, dtype=dtype)
    lengths = [7, 13, 3, 10]
    x = padded_batch(rng, lengths, 9, frames=14)
    y, out_lengths = ours(x.astype(dtype), lengths)
    with torch.no_grad():
        refs = _espnet_per_utterance(torch, reference, x, lengths, dtype)
    check_batch(y, out_lengths, refs, dtype, case)
    if encoder == "rnn":
        # Without convolutions ESPnet's padded batch (sorted, zero padding) is the same computation.
        order = np.argsort(lengths)[::-1]
        xs = torch.from_numpy(np.nan_to_num(x[order]).astype(dtype))
        with torch.no_grad():
            batch, batch_lengths, _ = reference(xs, torch.tensor(np.array(lengths)[order]))
        assert_close(y[order][:, : batch.shape[1]], batch.numpy().astype(np.float64), dtype, f"{case} batch")


@pytest.mark.parametrize("etype", ["blstmp", "vggblstmp", "lstm", "bgru", "vgggru", "lstmp"])
def test_espnet1_encoder_matches_espnet(rng, etype):
    torch = pytest.importorskip("torch")
    pytest.importorskip("espnet")
    from espnet.nets.pytorch_backend.rnn.encoders import Encoder

    torch.manual_seed(1)
    projected_rnn = etype.endswith("p") and not etype.startswith("vgg")
    subsample = np.array([1, 2, 1, 2]) if projected_rnn else np.ones(4, dtype=np.int64)
    reference = Encoder(etype, 8, 3, 6, 5, subsample, 0.0).eval().double()
    encoder, conf = espnet1_encoder_conf(etype, 3, 6, 5, subsample.tolist())
    ours = RNNEncoder(_espnet_state(reference), encoder=encoder, input_size=8, conf=conf, dtype=np.float64)
    lengths = [9, 4, 13, 5]
    x = padded_batch(rng, lengths, 8)
    y, out_lengths = ours(x, lengths)
    with torch.no_grad():
        refs = _espnet_per_utterance(torch, reference, x, lengths, np.float64)
    check_batch(y, out_lengths, refs, np.float64, etype)


@pytest.mark.parametrize("positional_encoding", [False, True])
def test_conv2d_subsampling_matches_espnet(rng, positional_encoding):
    torch = pytest.importorskip("torch")
    pytest.importorskip("espnet")
    from espnet.nets.pytorch_backend.transformer.subsampling import Conv2dSubsampling as EspnetConv2dSubsampling

    torch.manual_seed(2)
    reference = EspnetConv2dSubsampling(19, 6, 0.0, None if positional_encoding else torch.nn.Identity()).eval()
    ours = Conv2dSubsampling(_espnet_state(reference), idim=19, channels=6, units=6,
                             positional_encoding=positional_encoding, dtype=np.float32)
    lengths = [15, 7, 30]
    x = padded_batch(rng, lengths, 19)
    y, out_lengths = ours(x.astype(np.float32), lengths)
    refs = []
    with torch.no_grad():
        for b, n in enumerate(lengths):
            out, _ = reference(torch.from_numpy(x[b:b + 1, :n].astype(np.float32)), None)
            refs.append(out[0].numpy().astype(np.float64))
    check_batch(y, out_lengths, refs, np.float32, "Conv2dSubsampling vs ESPnet")


def test_global_mvn_matches_espnet(rng, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("espnet2")
    from espnet2.layers.global_mvn import GlobalMVN as EspnetGlobalMVN

    feats = rng.standard_normal((50, 5)) * 3 + 1
    np.savez(tmp_path / "stats.npz", count=50, sum=feats.sum(0), sum_square=(feats ** 2).sum(0))
    reference = EspnetGlobalMVN(tmp_path / "stats.npz")
    ours = GlobalMVN(_espnet_state(reference), size=5, dtype=np.float32)
    x = padded_batch(rng, [4, 2], 5).astype(np.float32)
    y, _ = ours(x, [4, 2])
    ref, _ = reference(torch.from_numpy(np.nan_to_num(x)), torch.tensor([4, 2]))
    assert_close(y, ref.numpy().astype(np.float64), np.float32, "GlobalMVN vs ESPnet")


def test_recurrent_layer_kernel_checks_its_arguments(rng):
    from attnkit import _core
    from attnkit._linear import PackedWeight

    T, B, H = 3, 2, 5
    gx = rng.standard_normal((T, B, 4 * H)).astype(np.float32)
    w = PackedWeight(rng.standard_normal((4 * H, H)).astype(np.float32))
    out = np.zeros((T, B, H), np.float32)
    with pytest.raises(ValueError, match=r"active must lie in \[0, B=2\], got active\[1\]=3"):
        _core.recurrent_layer(gx, w.panels, None, np.array([2, 3, 1]), False, "lstm", out)
    with pytest.raises(ValueError, match=r"weight_hh must be .* shape \(2, 5, 16\)"):
        _core.recurrent_layer(gx, w.panels[:1], None, np.array([2, 2, 1]), False, "lstm", out)
    with pytest.raises(ValueError, match=r"gx must be .* shape \(3, 2, 20\)"):
        _core.recurrent_layer(gx[:, :, :-1].copy(), w.panels, None, np.array([2, 2, 1]), False, "lstm", out)
    with pytest.raises(ValueError, match=r"gx must be .* shape \(3, 2, 15\)"):  # GRU: 3 gates
        _core.recurrent_layer(gx, w.panels, None, np.array([2, 2, 1]), False, "gru", out)
    with pytest.raises(ValueError, match="cell must be 'lstm' or 'gru', got 'rnn'"):
        _core.recurrent_layer(gx, w.panels, None, np.array([2, 2, 1]), False, "rnn", out)
