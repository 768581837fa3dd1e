"""The digit recipe's PyTorch model (recipes/digits/model.py) against ESPnet's own modules:
its state_dict loads into them with strict names, and they compute the same numbers.

Needs torch and espnet (skipped otherwise). The encoder's conv2d input layer is attnkit's
extension of ESPnet2's RNNEncoder, so it is checked against ESPnet's Conv2dSubsampling with the
positional encoding replaced by an identity and equal channel / output sizes.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("espnet2")

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes" / "digits"
sys.path.insert(0, str(RECIPE_DIR))

from model import (  # noqa: E402
    DECODER_CONF, ENCODER_CONF, Conv2dSubsampling, DigitRecogniser, GlobalMVN, ctc_loss, label_smoothing_loss,
)
from tokens import TOKEN_LIST  # noqa: E402

VOCAB = len(TOKEN_LIST)
FEATURE_BINS = 80


def subtree(state_dict: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


@pytest.fixture
def model():
    torch.manual_seed(0)
    stats = torch.Generator().manual_seed(1)
    recogniser = DigitRecogniser(VOCAB, FEATURE_BINS, torch.randn(FEATURE_BINS, generator=stats),
                                 torch.rand(FEATURE_BINS, generator=stats) + 0.5)
    return recogniser.eval()


@pytest.fixture
def encoder_output():
    """Unsorted lengths, one of length 1, garbage in the padding: enc [4, 9, 128], lengths [4]."""
    torch.manual_seed(2)
    lengths = torch.tensor([5, 9, 1, 7])
    enc = torch.randn(4, 9, ENCODER_CONF["output_size"])
    return enc, lengths


def test_decoder_matches_espnet_rnn_decoder(model, encoder_output):
    from espnet2.asr.decoder.rnn_decoder import RNNDecoder

    reference = RNNDecoder(VOCAB, ENCODER_CONF["output_size"], **DECODER_CONF).eval()
    reference.load_state_dict(subtree(model.state_dict(), "decoder."), strict=True)
    enc, lengths = encoder_output
    enc = enc.masked_fill(torch.arange(9)[None, :, None] >= lengths[:, None, None], 0.0)
    ys_in = torch.randint(0, VOCAB, (4, 6))
    ys_in_lengths = torch.tensor([6, 3, 1, 6])
    with torch.no_grad():
        expected, _ = reference(enc, lengths, ys_in, ys_in_lengths)
        got = model.decoder(enc, lengths, ys_in)
    valid = torch.arange(6)[None, :] < ys_in_lengths[:, None]
    torch.testing.assert_close(got[valid], expected[valid], rtol=1e-5, atol=1e-5)


def test_encoder_rnn_matches_espnet_rnn_encoder(model, encoder_output):
    from espnet2.asr.encoder.rnn_encoder import RNNEncoder

    conf = {k: v for k, v in ENCODER_CONF.items() if not k.startswith("input_layer")}
    reference = RNNEncoder(ENCODER_CONF["input_layer_units"], **conf).eval()
    rnn_state = subtree(model.state_dict(), "encoder.enc.")
    reference.load_state_dict({"enc." + key: value for key, value in rnn_state.items()}, strict=True)
    x, lengths = encoder_output
    order = torch.argsort(lengths, descending=True)  # ESPnet packs with enforce_sorted
    with torch.no_grad():
        expected, expected_lengths, _ = reference(x[order], lengths[order])
        got = model.encoder.enc[0](x, lengths)
    got = got.masked_fill(torch.arange(9)[None, :, None] >= lengths[:, None, None], 0.0)
    torch.testing.assert_close(got[order], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(expected_lengths, lengths[order])


def test_input_layer_matches_espnet_conv2d_subsampling_per_utterance():
    """Each row of a padded batch equals ESPnet run on that utterance alone. (In a padded batch
    ESPnet's mask slicing keeps (((L + 1) // 2) + 1) // 2 frames of a padded row, some of them
    computed from padding; the recipe uses the unpadded count ((L - 1) // 2 - 1) // 2.)"""
    from espnet.nets.pytorch_backend.transformer.subsampling import Conv2dSubsampling as EspnetConv2dSubsampling

    torch.manual_seed(3)
    channels = 8  # ESPnet's class uses one size for channels and output
    ours = Conv2dSubsampling(FEATURE_BINS, channels, channels)
    reference = EspnetConv2dSubsampling(FEATURE_BINS, channels, 0.0, pos_enc=torch.nn.Identity())
    reference.load_state_dict(ours.state_dict(), strict=True)
    lengths = torch.tensor([7, 31, 8, 30])
    feats = torch.randn(4, 31, FEATURE_BINS)  # padding holds garbage
    with torch.no_grad():
        got, got_lengths = ours(feats, lengths)
        for n, length in enumerate(lengths.tolist()):
            alone = feats[n : n + 1, :length]
            expected, expected_mask = reference(alone, torch.ones(1, 1, length, dtype=torch.bool))
            assert got_lengths[n] == expected_mask.sum() == expected.size(1)
            torch.testing.assert_close(got[n : n + 1, : got_lengths[n]], expected)


def test_normalize_matches_espnet_global_mvn(tmp_path):
    from espnet2.layers.global_mvn import GlobalMVN as EspnetGlobalMVN

    rng = np.random.default_rng(4)
    frames = rng.normal(3.0, 2.0, (500, FEATURE_BINS))
    stats_file = tmp_path / "feats_stats.npz"
    np.savez(stats_file, count=np.array(len(frames)), sum=frames.sum(0), sum_square=(frames ** 2).sum(0))
    reference = EspnetGlobalMVN(stats_file)
    ours = GlobalMVN(reference.mean, reference.std)
    assert set(ours.state_dict()) == set(reference.state_dict())
    feats = torch.randn(3, 10, FEATURE_BINS)
    lengths = torch.tensor([10, 1, 6])
    expected, _ = reference(feats.clone().double(), lengths)
    torch.testing.assert_close(ours(feats, lengths), expected.float(), rtol=1e-5, atol=1e-5)


def test_losses_match_espnet(model, encoder_output):
    from espnet2.asr.ctc import CTC
    from espnet.nets.pytorch_backend.transformer.label_smoothing_loss import LabelSmoothingLoss

    enc, lengths = encoder_output
    targets = torch.tensor([[3, 4, 5, -1], [6, 7, 8, 9], [10, -1, -1, -1], [11, 12, -1, -1]])
    target_lengths = (targets >= 0).sum(1)
    reference_ctc = CTC(VOCAB, ENCODER_CONF["output_size"])
    reference_ctc.load_state_dict(subtree(model.state_dict(), "ctc."), strict=True)
    with torch.no_grad():
        expected = reference_ctc(enc, lengths, targets, target_lengths)
        got = ctc_loss(model.ctc.log_probs(enc), lengths, targets.clamp(min=0), target_lengths)
    torch.testing.assert_close(got, expected)

    logits = torch.randn(4, 4, VOCAB)
    expected = LabelSmoothingLoss(VOCAB, -1, 0.1, normalize_length=False)(logits, targets)
    torch.testing.assert_close(label_smoothing_loss(logits, targets, 0.1), expected)


def test_exported_experiment_loads_into_espnet_modules():
    """build/digits/exp (written by recipes/digits/export.py) when it exists."""
    exp = Path(__file__).resolve().parents[1] / "build" / "digits" / "exp"
    if not (exp / "model.pth").exists():
        pytest.skip("no exported experiment: run recipes/digits (README) first")
    import yaml
    from espnet2.asr.ctc import CTC
    from espnet2.asr.decoder.rnn_decoder import RNNDecoder

    config = yaml.safe_load((exp / "config.yaml").read_text())
    state = torch.load(exp / "model.pth")
    assert config["token_list"] == TOKEN_LIST and config["input_size"] == FEATURE_BINS
    fresh = DigitRecogniser(VOCAB, FEATURE_BINS, torch.zeros(FEATURE_BINS), torch.ones(FEATURE_BINS)).state_dict()
    assert {key: tuple(value.shape) for key, value in state.items()} == {
        key: tuple(value.shape) for key, value in fresh.items()}
    RNNDecoder(VOCAB, config["encoder_conf"]["output_size"], **config["decoder_conf"]).load_state_dict(
        subtree(state, "decoder."), strict=True)
    CTC(VOCAB, config["encoder_conf"]["output_size"]).load_state_dict(subtree(state, "ctc."), strict=True)
