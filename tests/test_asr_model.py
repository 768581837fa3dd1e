"""attnkit.asr.model: AsrConfig parsing, AsrModel's parts and numbers, and the model directory
(config.yaml + model.safetensors) round trip. NumPy only."""
import numpy as np
import pytest

from attnkit import UnsupportedError
from attnkit.asr.decoder import RNNDecoder
from attnkit.asr.model import AsrConfig, AsrModel
from conftest import assert_close
from test_asr_encoder import padded_batch, random_params, ref_encoder

TOKENS = ["<blank>", "<unk>", "<space>", "a", "b", "c", "<sos/eos>"]

# The demo model's architecture, shrunk: conv2d input layer, 2-layer BLSTM + l_last, AttLoc,
# an LSTM decoder with context_residual, CTC.
TINY = {
    "token_list": TOKENS, "input_size": 12,
    "features": {"type": "kaldi_fbank", "sample_rate": 16000, "num_mel_bins": 12},
    "normalize": "global_mvn", "normalize_conf": {},
    "encoder": "rnn",
    "encoder_conf": {"rnn_type": "lstm", "bidirectional": True, "use_projection": False, "num_layers": 2,
                     "hidden_size": 5, "output_size": 6, "subsample": None, "input_layer": "conv2d",
                     "input_layer_channels": 3, "input_layer_units": 7},
    "decoder": "rnn",
    "decoder_conf": {"rnn_type": "lstm", "num_layers": 1, "hidden_size": 8, "context_residual": True,
                     "att_conf": {"atype": "location", "adim": 4, "aconv_chans": 2, "aconv_filts": 3}},
    "ctc_weight": 0.3,
}


def tiny_weights(rng, config=TINY):
    shapes = AsrConfig.from_dict(config).param_shapes()
    weights = random_params(shapes, rng)
    if "normalize.std" in weights:
        weights["normalize.std"] = rng.random(shapes["normalize.std"]) + 0.5
    return weights


@pytest.fixture
def weights(rng):
    return tiny_weights(rng)


def test_config_fills_espnet_defaults_and_round_trips():
    config = AsrConfig.from_dict(TINY)
    assert config.vocab_size == 7 and config.eprojs == 6
    assert config.decoder_conf["att_conf"]["aheads"] == 4  # build_attention_list's default
    assert config.decoder_conf["replace_sos"] is False
    assert config.encoder_conf["input_layer_positional_encoding"] is False
    assert config.normalize_conf == {"norm_means": True, "norm_vars": True}
    again = AsrConfig.from_dict(config.to_dict())
    assert again == config
    names = config.param_shapes()
    assert names["decoder.output.weight"] == (7, 8 + 6)  # context_residual
    assert names["decoder.decoder.0.weight_ih"] == (32, 8 + 6)
    assert names["decoder.att_list.0.loc_conv.weight"] == (2, 1, 1, 7)
    assert names["encoder.embed.out.0.weight"] == (7, 3 * 2)
    assert names["ctc.ctc_lo.weight"] == (7, 6)


@pytest.mark.parametrize("change,match", [
    ({"encoder": "conformer"}, "encoder must be one of"),
    ({"normalize": "utterance_mvn"}, "normalize must be null or 'global_mvn'"),
    ({"decoder": "transformer"}, "decoder must be 'rnn'"),
    ({"preencoder": "sinc"}, r"unsupported key\(s\) \['preencoder'\]"),
    ({"decoder_conf": {**TINY["decoder_conf"], "att_conf": {"atype": "location", "num_att": 2}}},
     "decoder_conf.att_conf.num_att must be 1"),
    ({"decoder_conf": {**TINY["decoder_conf"], "replace_sos": True}}, "decoder_conf.replace_sos must be False"),
    ({"encoder_conf": {**TINY["encoder_conf"], "input_layer": "conv2d6"}}, "encoder_conf.input_layer"),
    ({"attnkit_asr_model": 2}, "attnkit_asr_model"),
])
def test_config_names_the_unsupported_part(change, match):
    with pytest.raises(UnsupportedError, match=match):
        AsrConfig.from_dict({**TINY, **change})


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ctc_weight must be a number in"):
        AsrConfig.from_dict({**TINY, "ctc_weight": 1.5})
    with pytest.raises(ValueError, match="token_list must be a list"):
        AsrConfig.from_dict({**TINY, "token_list": "abc"})
    with pytest.raises(ValueError, match=r"config must have the keys \['input_size'\]"):
        AsrConfig.from_dict({k: v for k, v in TINY.items() if k != "input_size"})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_encode_and_ctc_match_reference(rng, weights, dtype):
    model = AsrModel(TINY, weights, dtype=dtype)
    lengths = [20, 7, 31, 9]
    feats = padded_batch(rng, lengths, 12, frames=33) * 3 + 1
    enc, enc_lengths = model.encode(feats.astype(np.float32 if dtype == np.float32 else np.float64), lengths)
    assert enc.dtype == dtype and enc.shape == (4, max(enc_lengths), 6)
    encoder = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    log_probs = model.ctc_log_probs(enc)
    for b, n in enumerate(lengths):
        normalized = (feats[b, :n] - weights["normalize.mean"]) / weights["normalize.std"]
        ref = ref_encoder(normalized, encoder, "rnn", model.config.encoder_conf)
        assert enc_lengths[b] == ref.shape[0]
        assert_close(enc[b, : ref.shape[0]], ref, dtype, f"encode, utterance {b}")
        assert np.all(enc[b, ref.shape[0]:] == 0)
        z = ref @ weights["ctc.ctc_lo.weight"].T + weights["ctc.ctc_lo.bias"]
        ref_lp = z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
        assert_close(log_probs[b, : ref.shape[0]], ref_lp, dtype, f"ctc_log_probs, utterance {b}")


def test_parts_are_wired_with_the_weights(rng, weights):
    model = AsrModel(TINY, weights)
    assert isinstance(model.decoder, RNNDecoder) and model.decoder.attention is model.attention
    assert (model.blank, model.sos, model.eos, model.vocab_size) == (0, 6, 6, 7)
    for name, value in model.attention.params.items():
        np.testing.assert_array_equal(value, weights["decoder.att_list.0." + name].astype(np.float32))
    assert model.decoder.context_residual and model.decoder.dunits == 8 and model.decoder.eprojs == 6
    enc, enc_lengths = model.encode(rng.standard_normal((2, 15, 12)).astype(np.float32), [15, 9])
    prepared = model.decoder.prepare(enc, enc_lengths)
    logp, state, _ = model.decoder.step(prepared, np.array([model.sos, model.sos]), model.decoder.init_state(prepared))
    assert logp.shape == (2, 7)
    assert_close(np.exp(logp).sum(-1), np.ones(2), np.float32, "decoder step probabilities")


def test_ctc_only_and_attention_only_models(rng):
    ctc_only = {**TINY, "ctc_weight": 1.0}
    model = AsrModel(ctc_only, tiny_weights(rng, ctc_only))
    assert model.decoder is None and model.attention is None and model.config.decoder is None
    attention_only = {**TINY, "ctc_weight": 0.0}
    model = AsrModel(attention_only, tiny_weights(rng, attention_only))
    assert not model.has_ctc and "ctc.ctc_lo.weight" not in model.param_shapes
    with pytest.raises(UnsupportedError, match="no CTC branch"):
        model.ctc_log_probs(np.zeros((1, 2, 6), np.float32))


def test_weight_errors_list_every_problem(weights):
    bad = dict(weights)
    bad["decoder.embed.weight"] = np.zeros((7, 5))
    del bad["encoder.enc.0.l_last.bias"]
    bad["decoder.extra"] = np.zeros(3)
    with pytest.raises(ValueError) as info:
        AsrModel(TINY, bad)
    message = str(info.value)
    assert "AsrModel: weights must match" in message
    assert "missing ['encoder.enc.0.l_last.bias']" in message
    assert "unexpected ['decoder.extra']" in message
    assert "'decoder.embed.weight' must have shape (7, 8), got (7, 5)" in message
    with pytest.raises(TypeError, match="weights must be a mapping"):
        AsrModel(TINY, [1, 2])


def test_encode_errors(weights):
    model = AsrModel(TINY, weights)
    with pytest.raises(ValueError, match=r"feats must have shape \[B, T, 12\]"):
        model.encode(np.zeros((1, 10, 11), np.float32))
    with pytest.raises(ValueError, match="lengths must be >= 7"):
        model.encode(np.zeros((2, 10, 12), np.float32), [10, 5])
    with pytest.raises(ValueError, match="lengths must lie in"):
        model.encode(np.zeros((1, 10, 12), np.float32), [11])
    with pytest.raises(ValueError, match=r"enc must have shape \[B, T', 6\]"):
        model.ctc_log_probs(np.zeros((1, 3, 5), np.float32))


def test_save_load_round_trip(rng, weights, tmp_path):
    from safetensors.numpy import load_file

    model = AsrModel(TINY, weights)
    model.save(tmp_path / "f32")
    again = AsrModel.load(tmp_path / "f32")
    assert again.config == model.config
    for name, value in model.weights.items():
        np.testing.assert_array_equal(again.weights[name], value)

    model.save(tmp_path / "f16", dtype=np.float16)
    stored = load_file(str(tmp_path / "f16" / "model.safetensors"))
    assert stored["decoder.embed.weight"].dtype == np.float16
    assert stored["normalize.mean"].dtype == np.float32  # the statistics keep their precision
    half = AsrModel.load(tmp_path / "f16")
    assert {v.dtype for v in half.weights.values()} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(half.weights["decoder.embed.weight"],
                                  weights["decoder.embed.weight"].astype(np.float16).astype(np.float32))
    feats = rng.standard_normal((1, 20, 12)).astype(np.float32)
    np.testing.assert_allclose(half.encode(feats)[0], model.encode(feats)[0], atol=2e-2)

    wide = AsrModel.load(tmp_path / "f32", dtype=np.float64)
    assert wide.dtype == np.float64 and wide.attention.dtype == np.float64


def test_load_errors(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        AsrModel.load(tmp_path)
    model = AsrModel(TINY, weights)
    model.save(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        AsrModel.load(tmp_path)
    with pytest.raises(TypeError, match="dtype must be float16, float32 or float64"):
        model.save(tmp_path / "x", dtype=np.int8)
