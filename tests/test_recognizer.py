"""Audio to text: Recognizer, `attnkit transcribe` / `evaluate`, plot_attention, on a small random
model (shapes, files, errors) and on the bundled model (the transcripts of the bundled samples)."""
import json

import numpy as np
import pytest

pytest.importorskip("soundfile")
pytest.importorskip("kaldi_native_fbank")
pytest.importorskip("safetensors")
import soundfile

from attnkit import _core
from attnkit.asr import AsrModel, AudioError, Recognizer, bundled_samples
from attnkit.asr.commands import edit_distance
from attnkit.asr.recognizer import BUNDLED_MODEL, tokens_to_text
from attnkit.cli import main

TOKENS = ["<blank>", "<unk>", "<space>", "a", "b", "c", "<sos/eos>"]
FEATURES = {"type": "kaldi_fbank", "sample_rate": 16000, "num_mel_bins": 20, "frame_length_ms": 25.0,
            "frame_shift_ms": 10.0, "dither": 0.0, "waveform_scale": 32768.0}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model of the bundled one's architecture, random weights."""
    config = {"token_list": TOKENS, "input_size": 20, "features": FEATURES, "normalize": "global_mvn",
              "encoder": "rnn", "encoder_conf": {"rnn_type": "lstm", "bidirectional": True, "use_projection": False,
                                                 "num_layers": 1, "hidden_size": 8, "output_size": 8, "subsample": None,
                                                 "input_layer": "conv2d", "input_layer_channels": 4,
                                                 "input_layer_units": 8},
              "decoder": "rnn", "decoder_conf": {"rnn_type": "lstm", "num_layers": 1, "hidden_size": 12,
                                                 "context_residual": True,
                                                 "att_conf": {"atype": "location", "adim": 6, "aconv_chans": 2,
                                                              "aconv_filts": 3}},
              "ctc_weight": 0.3}
    from attnkit.asr import AsrConfig

    shapes = AsrConfig.from_dict(config).param_shapes()
    rng = np.random.default_rng(0)
    weights = {k: (rng.standard_normal(s) * 0.3).astype(np.float32) for k, s in shapes.items()}
    weights["normalize.mean"][:] = 5
    weights["normalize.std"][:] = 3
    path = tmp_path_factory.mktemp("model")
    AsrModel(config, weights).save(path)
    return path


def tone(seconds, rate=16000, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def test_transcript_fields(model_dir, tmp_path):
    wav = tmp_path / "a.wav"
    soundfile.write(wav, tone(0.8), 16000)
    rec = Recognizer(model_dir)
    t = rec.transcribe_file(wav)
    assert t.audio_seconds == pytest.approx(0.8)
    assert t.features.shape == (78, 20)  # (12800 - 400) // 160 + 1 frames, 20 bins
    S = t.weights.shape[0]
    assert len(t.tokens) in (S, S - 1)  # one step per token, plus the eos step when it ended
    assert t.weights.shape[1] == ((78 - 1) // 2 - 1) // 2
    np.testing.assert_array_equal(t.peaks, np.argmax(t.weights, axis=-1))
    assert t.text == tokens_to_text(t.tokens) and t.rtf > 0
    assert json.loads(json.dumps(t.to_json()))["peak_frames"] == t.peaks.tolist()


def test_any_rate_and_channels_give_the_same_features_length(model_dir, tmp_path):
    rec = Recognizer(model_dir, beam=3, ctc_weight=0.5)
    soundfile.write(tmp_path / "mono16k.wav", tone(0.8), 16000)
    soundfile.write(tmp_path / "stereo44k.flac", tone(0.8, 44100, 2), 44100)
    a = rec.transcribe_file(tmp_path / "mono16k.wav")
    b = rec.transcribe_file(tmp_path / "stereo44k.flac")
    assert a.features.shape == b.features.shape
    # Same tone, resampled: its mel bin is the loudest in the same frames (the near-silent high
    # bins differ by the resampler's noise floor, in log scale).
    assert np.mean(np.argmax(a.features, 1) == np.argmax(b.features, 1)) > 0.95
    np.testing.assert_allclose(a.features[5:-5, :6], b.features[5:-5, :6], atol=0.05)


def test_bad_audio_is_a_clear_error(model_dir, tmp_path):
    rec = Recognizer(model_dir)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(AudioError, match="bad.wav: not a readable audio file"):
        rec.transcribe_file(bad)
    with pytest.raises(AudioError, match="missing.wav: no such file"):
        rec.transcribe_file(tmp_path / "missing.wav")


def test_too_short_audio_gives_an_empty_transcript_and_a_warning(model_dir, tmp_path):
    wav = tmp_path / "short.wav"
    soundfile.write(wav, tone(0.02), 16000)
    with pytest.warns(UserWarning, match="too short"):
        t = Recognizer(model_dir).transcribe_file(wav)
    assert t.text == "" and t.tokens == []


def test_cli_transcribe_reports_bad_files_and_goes_on(model_dir, tmp_path, capsys):
    good = tmp_path / "good.wav"
    soundfile.write(good, tone(0.6), 16000)
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    out_json = tmp_path / "out.jsonl"
    status = main(["transcribe", "--model", str(model_dir), str(tmp_path / "broken.wav"), str(good),
                   "--json", str(out_json), "--plot", str(tmp_path / "plots")])
    captured = capsys.readouterr()
    assert status == 1
    assert "broken.wav: error:" in captured.err
    assert captured.out.startswith("good.wav\t")
    records = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert "error" in records[0] and records[1]["file"].endswith("good.wav")
    assert (tmp_path / "plots" / "good.png").stat().st_size > 1000


def test_cli_evaluate(model_dir, tmp_path, capsys):
    for i in range(3):
        soundfile.write(tmp_path / f"u{i}.wav", tone(0.5 + 0.1 * i), 16000)
    (tmp_path / "transcripts.txt").write_text("u0 a b\nu1 c\nu2 a\n")
    status = main(["evaluate", str(tmp_path), "--model", str(model_dir), "--json", str(tmp_path / "r.json")])
    assert status == 0
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["utterances"] == 3 and 0 <= summary["cer"]
    assert "CER" in capsys.readouterr().out


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a"]) == 1 and edit_distance("abc", "abc") == 0


@pytest.mark.skipif(_core.cuda_device_count()[0] > 0, reason="a GPU is here")
def test_cuda_device_without_a_gpu_is_refused_clearly(model_dir):
    # Without CuPy, without the CUDA part or without a GPU: each says so, naming the option.
    with pytest.raises(SystemExit, match=r"--device cuda: Recognizer\(device='cuda'\): (needs CuPy|this attnkit was "
                                         r"built without CUDA|needs a GPU)"):
        main(["transcribe", "--model", str(model_dir), "--device", "cuda"])
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'gpu'"):
        Recognizer(model_dir, device="gpu")


@pytest.mark.skipif(not (BUNDLED_MODEL / "model.safetensors").is_file(), reason="no bundled model in this tree")
def test_bundled_model_transcribes_its_samples():
    """The model in the box gets every bundled sample right (voices it never heard)."""
    samples = bundled_samples()
    refs = dict(line.split(" ", 1) for line in
                (samples[0].parent / "transcripts.txt").read_text().splitlines() if line.strip())
    rec = Recognizer()
    for path in samples:
        assert rec.transcribe_file(path).text == refs[path.name].strip(), path.name


def test_transcribe_samples_checks_its_input(model_dir):
    rec = Recognizer(model_dir)
    assert rec.transcribe(tone(0.5)).audio_seconds == pytest.approx(0.5)
    with pytest.raises(ValueError, match="samples must be a 1-D array of finite values .* with NaN"):
        rec.transcribe(np.full(8000, np.nan, np.float32))
    with pytest.raises(ValueError, match=r"got shape \(8000, 2\)"):
        rec.transcribe(tone(0.5, channels=2))


def test_cli_plot_without_matplotlib_is_a_clear_error(model_dir, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["transcribe", "--model", str(model_dir), "--plot", "/tmp/never"]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
