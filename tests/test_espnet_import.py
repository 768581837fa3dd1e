"""Reading torch.save checkpoints without torch (and without running pickled code), and the
ESPnet -> attnkit conversion (ESPnet2 config.yaml + model.pth, espnet1 model.json + model.acc.best)
with the `attnkit convert-espnet` command.

The checkpoints are written here without torch (a pickler that emits torch.save's layout), so
the reader and the converter are tested where torch is missing; where torch is installed the
reader is also checked against torch.load, and the converted model against ESPnet's own modules.
"""
import collections
import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import yaml

from attnkit import UnsupportedError
from attnkit.asr.espnet_import import convert_espnet, espnet1_config, espnet2_config
from attnkit.asr.model import AsrConfig, AsrModel
from attnkit.asr.torch_checkpoint import UnsafeCheckpointError, read_state_dict
from attnkit.cli import main
from conftest import assert_close
from test_asr_encoder import padded_batch
from test_asr_model import TINY, tiny_weights


# -- a torch.save writer without torch -----------------------------------------------------------

class _Global:
    """A module-level name written as a GLOBAL opcode, whether or not it can be imported here."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle wants a reduce function to be callable
        raise TypeError("a stand-in, never called")


class _StorageRef:
    def __init__(self, key, type_name, numel):
        self.key, self.type_name, self.numel = key, type_name, numel


_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage"}


class _TorchSavePickler(pickle._Pickler):
    """Pickles a state_dict as torch.save does: each array becomes
    torch._utils._rebuild_tensor_v2(<persistent storage>, offset, size, stride, False, OrderedDict())."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, storages):
        super().__init__(file, protocol=2)
        self.storages = storages

    def _save_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_Global] = _save_global

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj):
        if not isinstance(obj, np.ndarray):
            return NotImplemented
        # A view of a 1-D array is written as torch writes views: offset and strides into it.
        is_view = obj.base is not None and obj.base.ndim == 1 and obj.base.flags.c_contiguous
        owner = obj.base if is_view else np.array(obj, order="C")
        source = obj if is_view else owner
        offset = (source.ctypes.data - owner.ctypes.data) // source.itemsize
        stride = tuple(s // source.itemsize for s in source.strides)
        key = str(len(self.storages))
        self.storages[key] = owner.reshape(-1)
        ref = _StorageRef(key, _STORAGE_NAMES[obj.dtype], owner.size)
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (ref, offset, obj.shape, stride, False, collections.OrderedDict()))


def write_torch_save(path, state_dict, root="archive"):
    """A zip-format torch.save file of {name: np.ndarray} (arrays may be views of 1-D bases)."""
    storages, buf = {}, io.BytesIO()
    _TorchSavePickler(buf, storages).dump(collections.OrderedDict(state_dict))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", buf.getvalue())
        z.writestr(f"{root}/byteorder", "little")
        for key, data in storages.items():
            z.writestr(f"{root}/data/{key}", data.tobytes())
        z.writestr(f"{root}/version", "3\n")


# -- the reader ----------------------------------------------------------------------------------

def test_reader_reads_a_torch_save_layout_without_torch(rng, tmp_path):
    base = rng.standard_normal(30).astype(np.float32)
    state = {"w": rng.standard_normal((3, 4)), "half": rng.standard_normal(5).astype(np.float16),
             "ids": np.arange(4), "view": base[2:26].reshape(4, 6)[:, ::2], "scalar": np.array(1.5, np.float32)}
    write_torch_save(tmp_path / "m.pth", state)
    got = read_state_dict(tmp_path / "m.pth")
    assert list(got) == list(state)
    for name, value in state.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value)


def test_reader_equals_torch_load(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, 2, bidirectional=True)
    state = dict(lstm.state_dict())
    state.update({"half": torch.randn(3, 5).half(), "bf16": torch.randn(2, 3).bfloat16(), "long": torch.arange(5),
                  "view": torch.randn(4, 6)[1:, ::2], "transposed": torch.randn(3, 4).t(),
                  "scalar": torch.tensor(3.0), "empty": torch.zeros(0, 3)})
    for legacy in (False, True):
        path = tmp_path / f"m{legacy}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        ref = torch.load(path, weights_only=True)
        got = read_state_dict(path)
        assert list(got) == list(ref)
        for name, value in ref.items():
            value = value.float() if value.dtype == torch.bfloat16 else value
            np.testing.assert_array_equal(got[name], value.numpy(), err_msg=name)
            assert got[name].dtype == value.numpy().dtype, name
    # espnet1 trainer snapshots: the state_dict is the "model" entry, beside NumPy trainer state.
    torch.save({"model": lstm.state_dict(), "optimizer": torch.optim.Adam(lstm.parameters()).state_dict(),
                "trainer": {"iteration": np.int64(3), "history": np.arange(3.0)}}, tmp_path / "snapshot.ep.1")
    assert list(read_state_dict(tmp_path / "snapshot.ep.1")) == list(lstm.state_dict())


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_malicious_pickle_is_refused_without_running(tmp_path, layout):
    marker = tmp_path / "exploited"
    payload = pickle.dumps({"weight": _Exploit(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load the Python global (posix|nt)\.system"):
        read_state_dict(path)
    assert not marker.exists()


def test_other_globals_are_refused(tmp_path):
    path = tmp_path / "eval.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R.")
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.eval"):
        read_state_dict(path)
    # BUILD on an allowed class would rewrite it for the whole process: refused.
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02ccollections\nOrderedDict\n}X\x03\x00\x00\x00fooK\x01sb.")
    with pytest.raises(UnsafeCheckpointError, match="refusing to set the state of type"):
        read_state_dict(path)
    assert not hasattr(collections.OrderedDict, "foo")


def test_damaged_files_name_the_file(rng, tmp_path):
    good = tmp_path / "good.pth"
    write_torch_save(good, {"w": rng.standard_normal((40, 40))})
    data = good.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 20):
        bad = tmp_path / f"cut{cut}.pth"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=f"{bad.name}.*(damaged|truncated)"):
            read_state_dict(bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth is not a PyTorch checkpoint"):
        read_state_dict(garbage)
    with zipfile.ZipFile(good) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    short = tmp_path / "short.pth"
    with zipfile.ZipFile(short, "w") as z:
        for name, raw in entries.items():
            z.writestr(name, raw[:100] if name.endswith("data/0") else raw)
    with pytest.raises(ValueError, match="short.pth.*must hold 1600 elements of DoubleStorage, got 100 bytes"):
        read_state_dict(short)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        read_state_dict(tmp_path / "missing.pth")
    not_state = tmp_path / "list.pth"
    with zipfile.ZipFile(not_state, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match="must hold a state_dict"):
        read_state_dict(not_state)


# -- ESPnet2 conversion --------------------------------------------------------------------------

def espnet2_train_config(config=TINY):
    """An ESPnet2 asr config.yaml (as the demo's export writes it) for an attnkit config dict."""
    return {"token_type": "char", "token_list": config["token_list"], "frontend": None,
            "input_size": config["input_size"], "specaug": "specaug", "specaug_conf": {"num_freq_mask": 2},
            "normalize": "global_mvn", "normalize_conf": {"stats_file": "feats_stats.npz"},
            "encoder": config["encoder"], "encoder_conf": config["encoder_conf"],
            "decoder": config["decoder"], "decoder_conf": config["decoder_conf"],
            "model_conf": {"ctc_weight": config["ctc_weight"], "lsm_weight": 0.1},
            "attnkit_features": config["features"], "preencoder": None, "postencoder": None}


def test_espnet2_config_maps_onto_asr_config():
    config = espnet2_config(espnet2_train_config())
    assert config == AsrConfig.from_dict(TINY)
    for change, match in (({"frontend": "default"}, "frontend must be null"),
                          ({"normalize": "utterance_mvn"}, "normalize must be null or 'global_mvn'"),
                          ({"postencoder": "hugging_face_transformers"}, "postencoder must be null"),
                          ({"encoder": "conformer"}, "encoder must be one of"),
                          ({"model": "maskctc"}, "model must be 'espnet'")):
        with pytest.raises(UnsupportedError, match=match):
            espnet2_config({**espnet2_train_config(), **change})
    missing_frontend = {k: v for k, v in espnet2_train_config().items() if k != "frontend"}
    with pytest.raises(UnsupportedError, match="frontend must be null.*'default'"):
        espnet2_config(missing_frontend)


def test_espnet2_token_list_file(tmp_path):
    (tmp_path / "tokens.txt").write_text("\n".join(TINY["token_list"]) + "\n")
    config = espnet2_config({**espnet2_train_config(), "token_list": "tokens.txt"}, config_dir=tmp_path)
    assert config.token_list == TINY["token_list"]


def _write_espnet2_experiment(rng, directory):
    directory.mkdir(exist_ok=True)
    weights = tiny_weights(rng)
    (directory / "config.yaml").write_text(yaml.safe_dump(espnet2_train_config()))
    write_torch_save(directory / "model.pth", {k: v.astype(np.float32) for k, v in weights.items()})
    return weights


def test_convert_espnet2_without_torch(rng, tmp_path):
    weights = _write_espnet2_experiment(rng, tmp_path / "exp")
    model = convert_espnet(tmp_path / "exp" / "config.yaml", tmp_path / "exp" / "model.pth", tmp_path / "out")
    assert model.config == AsrConfig.from_dict(TINY)
    loaded = AsrModel.load(tmp_path / "out")
    for name, value in weights.items():
        np.testing.assert_array_equal(loaded.weights[name], value.astype(np.float32), err_msg=name)
    feats = rng.standard_normal((2, 16, 12)).astype(np.float32)
    np.testing.assert_array_equal(loaded.encode(feats, [16, 9])[0], model.encode(feats, [16, 9])[0])


def test_cli_convert_espnet(rng, tmp_path, capsys):
    _write_espnet2_experiment(rng, tmp_path / "exp")
    exp = tmp_path / "exp"
    status = main(["convert-espnet", "--config", str(exp / "config.yaml"), "--weights", str(exp / "model.pth"),
                   "--out", str(tmp_path / "half"), "--dtype", "float16"])
    assert status == 0 and "wrote" in capsys.readouterr().out
    from safetensors.numpy import load_file

    assert load_file(str(tmp_path / "half" / "model.safetensors"))["ctc.ctc_lo.weight"].dtype == np.float16
    assert AsrModel.load(tmp_path / "half").dtype == np.float32
    (exp / "model.pth").write_bytes((exp / "model.pth").read_bytes()[:50])
    status = main(["convert-espnet", "--config", str(exp / "config.yaml"), "--weights", str(exp / "model.pth"),
                   "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert status == 2 and "model.pth" in err and "truncated" in err


def test_convert_reports_weight_mismatches(rng, tmp_path):
    weights = tiny_weights(rng)
    weights["decoder.embed.weight"] = np.zeros((7, 3), np.float32)
    del weights["ctc.ctc_lo.bias"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(espnet2_train_config()))
    write_torch_save(tmp_path / "model.pth", weights)
    with pytest.raises(ValueError, match=r"missing \['ctc.ctc_lo.bias'\].*'decoder.embed.weight' must have shape "
                                         r"\(7, 8\), got \(7, 3\)"):
        convert_espnet(tmp_path / "config.yaml", tmp_path / "model.pth")


def test_convert_espnet2_matches_espnet(rng, tmp_path):
    """The demo's architecture built from ESPnet2's own classes (ESPnetASRModel, RNNEncoder with
    attnkit's conv2d input layer, RNNDecoder with AttLoc, CTC), saved with torch.save."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("espnet2")
    from espnet2.asr.ctc import CTC
    from espnet2.asr.decoder.rnn_decoder import RNNDecoder
    from espnet2.asr.encoder.rnn_encoder import RNNEncoder
    from espnet2.asr.espnet_model import ESPnetASRModel
    from espnet2.layers.global_mvn import GlobalMVN
    from espnet.nets.pytorch_backend.transformer.subsampling import Conv2dSubsampling

    class ConvRNNEncoder(RNNEncoder):
        """ESPnet2's RNNEncoder behind ESPnet's Conv2dSubsampling without positional encoding."""

        def __init__(self, input_size, units, **conf):
            super().__init__(units, **conf)
            self.embed = Conv2dSubsampling(input_size, units, 0.0, torch.nn.Identity())

        def forward(self, xs_pad, ilens, prev_states=None):
            xs_pad, _ = self.embed(xs_pad, None)
            return super().forward(xs_pad, ((ilens - 1) // 2 - 1) // 2)

    torch.manual_seed(0)
    config = {**TINY, "encoder_conf": {**TINY["encoder_conf"], "input_layer_channels": 7}}
    feats_for_stats = rng.standard_normal((40, 12)) * 2 + 1
    np.savez(tmp_path / "feats_stats.npz", count=40, sum=feats_for_stats.sum(0),
             sum_square=(feats_for_stats ** 2).sum(0))
    enc_conf = {k: v for k, v in config["encoder_conf"].items() if not k.startswith("input_layer")}
    V, eprojs = len(TINY["token_list"]), enc_conf["output_size"]
    reference = ESPnetASRModel(
        vocab_size=V, token_list=TINY["token_list"], frontend=None, specaug=None,
        normalize=GlobalMVN(tmp_path / "feats_stats.npz"), preencoder=None,
        encoder=ConvRNNEncoder(12, 7, **enc_conf), postencoder=None,
        decoder=RNNDecoder(V, eprojs, **config["decoder_conf"]), ctc=CTC(V, eprojs), joint_network=None,
        ctc_weight=0.3, report_cer=False, report_wer=False).eval()
    torch.save(reference.state_dict(), tmp_path / "model.pth")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(espnet2_train_config(config)))
    model = convert_espnet(tmp_path / "config.yaml", tmp_path / "model.pth", tmp_path / "out")
    for name, value in torch.load(tmp_path / "model.pth", weights_only=True).items():
        np.testing.assert_array_equal(model.weights[name], value.numpy().astype(np.float32), err_msg=name)

    lengths = [20, 7, 31, 9]
    feats = padded_batch(rng, lengths, 12, frames=33).astype(np.float32)
    enc, enc_lengths = model.encode(feats, lengths)
    with torch.no_grad():
        for b, n in enumerate(lengths):
            ref, ref_lengths = reference.encode(torch.from_numpy(feats[b:b + 1, :n].copy()), torch.tensor([n]))
            assert enc_lengths[b] == int(ref_lengths[0])
            assert_close(enc[b, :enc_lengths[b]], ref[0].numpy().astype(np.float64), np.float32, f"encode {b}")
            assert_close(model.ctc_log_probs(enc[b:b + 1, :enc_lengths[b]])[0],
                         reference.ctc.log_softmax(ref)[0].numpy().astype(np.float64), np.float32, f"ctc {b}")
        ys_in = torch.randint(0, V, (4, 5))
        logits, _ = reference.decoder(torch.from_numpy(enc), torch.from_numpy(enc_lengths), ys_in,
                                      torch.full((4,), 5))
    logp = model.decoder.forward(model.decoder.prepare(enc, enc_lengths), ys_in.numpy())
    assert_close(logp, torch.log_softmax(logits, -1).numpy().astype(np.float64), np.float32, "decoder")


# -- espnet1 conversion --------------------------------------------------------------------------

ESPNET1_ARGS = {"etype": "blstmp", "elayers": 2, "eunits": 5, "eprojs": 6, "subsample": "1_2_1", "dtype": "lstm",
                "dlayers": 1, "dunits": 7, "atype": "location", "adim": 4, "aconv_chans": 2, "aconv_filts": 3,
                "mtlalpha": 0.3, "char_list": ["<blank>", "a", "b", "<space>", "<eos>"],
                "model_module": "espnet.nets.pytorch_backend.e2e_asr:E2E", "backend": "pytorch"}


def test_espnet1_config():
    config = espnet1_config([10, 5, ESPNET1_ARGS])
    assert (config.encoder, config.encoder_conf["subsample"], config.encoder_conf["use_projection"]) == \
        ("rnn", [2, 1], True)
    assert config.decoder_conf["att_conf"]["atype"] == "location" and config.ctc_weight == 0.3
    with pytest.raises(UnsupportedError, match="model_module"):
        espnet1_config([10, 5, {**ESPNET1_ARGS, "model_module": "espnet.nets.pytorch_backend.e2e_asr_transformer:E2E"}])
    with pytest.raises(ValueError, match="char_list must list the odim = 6 tokens"):
        espnet1_config([10, 6, ESPNET1_ARGS])


def test_convert_espnet1_without_torch(rng, tmp_path):
    config = espnet1_config([10, 5, ESPNET1_ARGS])
    ours = tiny_weights(rng, config.to_dict())
    # espnet1 names: enc.enc.*, dec.*, the attention twice (att.0.* and dec.att.0.*), ctc.*.
    state = {}
    for name, value in ours.items():
        if name.startswith("decoder.att_list."):
            state["att." + name[len("decoder.att_list."):]] = value
            state["dec.att." + name[len("decoder.att_list."):]] = value
        elif name.startswith("decoder."):
            state["dec." + name[len("decoder."):]] = value
        else:
            state[name.replace("encoder.", "enc.", 1)] = value
    (tmp_path / "model.json").write_text(json.dumps([10, 5, ESPNET1_ARGS]))
    write_torch_save(tmp_path / "model.acc.best", state)
    model = convert_espnet(tmp_path / "model.json", tmp_path / "model.acc.best")
    for name, value in ours.items():
        np.testing.assert_array_equal(model.weights[name], value.astype(np.float32), err_msg=name)
    state["att.0.gvec.bias"] = state["att.0.gvec.bias"] + 1
    write_torch_save(tmp_path / "model.acc.best", state)
    with pytest.raises(ValueError, match="equal tensors under 'att.0.gvec.bias'"):
        convert_espnet(tmp_path / "model.json", tmp_path / "model.acc.best")


def test_convert_espnet1_matches_espnet(rng, tmp_path):
    """espnet1's E2E names assembled from its own modules (E2E itself needs configargparse)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("espnet")
    from espnet.nets.pytorch_backend.ctc import CTC
    from espnet.nets.pytorch_backend.rnn.attentions import AttLoc
    from espnet.nets.pytorch_backend.rnn.decoders import Decoder
    from espnet.nets.pytorch_backend.rnn.encoders import Encoder

    torch.manual_seed(3)
    a = ESPNET1_ARGS
    e2e = torch.nn.Module()
    e2e.enc = Encoder(a["etype"], 10, a["elayers"], a["eunits"], a["eprojs"], np.array([1, 2, 1]), 0.0)
    e2e.ctc = CTC(5, a["eprojs"], 0.0)
    e2e.att = torch.nn.ModuleList([AttLoc(a["eprojs"], a["dunits"], a["adim"], a["aconv_chans"], a["aconv_filts"])])
    e2e.dec = Decoder(a["eprojs"], 5, a["dtype"], a["dlayers"], a["dunits"], 4, 4, e2e.att)
    e2e.eval()
    torch.save(e2e.state_dict(), tmp_path / "model.acc.best")
    (tmp_path / "model.json").write_text(json.dumps([10, 5, a]))
    model = convert_espnet(tmp_path / "model.json", tmp_path / "model.acc.best")
    lengths = [9, 4, 13]
    feats = padded_batch(rng, lengths, 10).astype(np.float32)
    enc, enc_lengths = model.encode(feats, lengths)
    with torch.no_grad():
        for b, n in enumerate(lengths):
            ref, ref_lengths, _ = e2e.enc(torch.from_numpy(feats[b:b + 1, :n].copy()), torch.tensor([n]))
            assert enc_lengths[b] == int(ref_lengths[0])
            assert_close(enc[b, :enc_lengths[b]], ref[0].numpy().astype(np.float64), np.float32, f"encode {b}")
        # Two decoder steps of espnet1's scorer interface on utterance 0 (sos, then token 2).
        x = torch.from_numpy(enc[0, :enc_lengths[0]].copy())
        state = e2e.dec.init_state(x)
        ref_steps = []
        for yseq in ([4], [4, 2]):
            logp, state = e2e.dec.score(torch.tensor(yseq), state, x)
            ref_steps.append(logp.numpy().astype(np.float64))
    prepared = model.decoder.prepare(enc[:1, :enc_lengths[0]], enc_lengths[:1])
    state = model.decoder.init_state(prepared)
    for token, ref in zip((4, 2), ref_steps):
        logp, state, _ = model.decoder.step(prepared, np.array([token]), state)
        assert_close(logp[0], ref, np.float32, f"decoder step after token {token}")
