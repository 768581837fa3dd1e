"""``AsrModel``: an ESPnet attention encoder-decoder with CTC (RNN encoder, RNN decoder), on NumPy.

A model is a configuration (``AsrConfig``) plus weights under ESPnet2's ``ESPnetASRModel``
state_dict names (``normalize.mean``, ``encoder.enc.0.nbrnn.weight_ih_l0``, ``decoder.embed.weight``,
``decoder.att_list.0.mlp_enc.weight``, ``ctc.ctc_lo.weight``, ...). On disk it is attnkit's own
model directory: ``config.yaml`` (``AsrConfig.to_dict()``) and ``model.safetensors`` (read with
``safetensors.numpy``: no pickle). ``attnkit.asr.espnet_import`` makes one from an ESPnet
experiment.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from attnkit._arrays import describe, host_float_array, is_device_array
from attnkit._core import UnsupportedError
from attnkit.asr.decoder import RNNDecoder, log_softmax
from attnkit.asr.encoder import RNNEncoder, encoder_conf_with_defaults
from attnkit.asr.normalize import GlobalMVN
from attnkit.asr.params import checked_params, float_dtype, padded_batch, with_prefix
from attnkit.asr.rnn import GATES
from attnkit._linear import linear
from attnkit.espnet.factory import initial_att

#: Version of the ``config.yaml`` layout written by ``AsrModel.save``.
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.yaml", "model.safetensors"

#: ESPnet2 ``RNNDecoder`` and ``build_attention_list`` defaults (espnet 202511).
DECODER_DEFAULTS: dict[str, Any] = {"rnn_type": "lstm", "num_layers": 1, "hidden_size": 320,
                                    "sampling_probability": 0.0, "dropout": 0.0, "context_residual": False,
                                    "replace_sos": False, "num_encs": 1, "att_conf": {}}
ATTENTION_DEFAULTS: dict[str, Any] = {"atype": "location", "num_att": 1, "num_encs": 1, "aheads": 4, "adim": 320,
                                      "awin": 5, "aconv_chans": 10, "aconv_filts": 100, "han_mode": False,
                                      "han_type": None, "han_heads": 4, "han_dim": 320, "han_conv_chans": -1,
                                      "han_conv_filts": 100, "han_win": 5}
#: ESPnet2 ``GlobalMVN`` options that matter at inference (``stats_file`` and ``eps`` only shape
#: the buffers at training time).
NORMALIZE_DEFAULTS: dict[str, Any] = {"norm_means": True, "norm_vars": True}

_TOP_KEYS = ("attnkit_asr_model", "token_list", "input_size", "features", "normalize", "normalize_conf",
             "encoder", "encoder_conf", "decoder", "decoder_conf", "ctc_weight")


def _completed(what: str, conf: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``conf`` over ``defaults``; a key the defaults do not have is an UnsupportedError."""
    if conf is not None and not isinstance(conf, Mapping):
        raise TypeError(f"{what} must be a mapping, got {describe(conf)}")
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(defaults))
    if unknown:
        raise UnsupportedError(f"{what} must use only the keys {sorted(defaults)}, got unsupported key(s) {unknown}")
    return {**defaults, **conf}


def decoder_conf_with_defaults(conf: Mapping[str, Any] | None) -> dict[str, Any]:
    """ESPnet2 ``decoder_conf`` of ``decoder: rnn`` completed with ESPnet's defaults; what attnkit
    does not run (replace_sos, several encoders or attentions) is an UnsupportedError."""
    full = _completed("decoder_conf", conf, DECODER_DEFAULTS)
    full["att_conf"] = _completed("decoder_conf.att_conf", full["att_conf"], ATTENTION_DEFAULTS)
    if full["rnn_type"] not in GATES:
        raise UnsupportedError(f"decoder_conf.rnn_type must be 'lstm' or 'gru', got {describe(full['rnn_type'])}")
    for key, value in (("replace_sos", full["replace_sos"]), ("num_encs", full["num_encs"]),
                       ("att_conf.num_att", full["att_conf"]["num_att"]),
                       ("att_conf.num_encs", full["att_conf"]["num_encs"]),
                       ("att_conf.han_mode", full["att_conf"]["han_mode"])):
        if value != (1 if "num_" in key else False):
            raise UnsupportedError(f"decoder_conf.{key} must be {1 if 'num_' in key else False} (one encoder, one "
                                   f"attention, sos as the first token), got {describe(value)}")
    return full


def rnn_decoder_shapes(vocab_size: int, eprojs: int, conf: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """ESPnet's RNN decoder parameters, decoder-local names (no ``att_list``): ``embed.weight [V, D]``,
    ``decoder.{l}.weight_ih [G*D, D + E if l == 0 else D]``, ``weight_hh [G*D, D]``, biases
    ``[G*D]``, ``output.weight [V, D (+ E with context_residual)]``, ``output.bias [V]``."""
    d, g = conf["hidden_size"], GATES[conf["rnn_type"]] * conf["hidden_size"]
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (vocab_size, d)}
    for layer in range(conf["num_layers"]):
        shapes[f"decoder.{layer}.weight_ih"] = (g, d + eprojs if layer == 0 else d)
        shapes[f"decoder.{layer}.weight_hh"] = (g, d)
        shapes[f"decoder.{layer}.bias_ih"] = (g,)
        shapes[f"decoder.{layer}.bias_hh"] = (g,)
    shapes["output.weight"] = (vocab_size, d + eprojs if conf["context_residual"] else d)
    shapes["output.bias"] = (vocab_size,)
    return shapes


def _positive_int(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {describe(value)}")
    return int(value)


@dataclass
class AsrConfig:
    """What an ``AsrModel`` is, apart from its weights (ESPnet2's config vocabulary).

    token_list: ESPnet2's, ``<blank>`` first (id 0), ``<sos/eos>`` last (id V - 1);
    input_size: the feature dimension F; features: how to compute them (e.g. the demo model's
    ``{type: kaldi_fbank, sample_rate: 16000, num_mel_bins: 80, ...}``), or None if unknown;
    normalize: ``global_mvn`` or None, with normalize_conf ``{norm_means, norm_vars}``;
    encoder ``rnn`` / ``vgg_rnn`` with encoder_conf (ESPnet2's keys, see
    ``attnkit.asr.encoder.ENCODER_DEFAULTS``); decoder ``rnn`` with decoder_conf (ESPnet2's
    ``RNNDecoder`` keys and ``att_conf``), or None when ctc_weight == 1; ctc_weight: the training
    CTC weight (ESPnet2's ``model_conf.ctc_weight``): the model has a CTC branch iff > 0 and a
    decoder iff < 1. ``from_dict`` fills in ESPnet's defaults and ``to_dict`` writes them all.
    """

    token_list: list[str]
    input_size: int
    encoder: str
    encoder_conf: dict[str, Any]
    decoder: str | None
    decoder_conf: dict[str, Any]
    ctc_weight: float
    normalize: str | None = None
    normalize_conf: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] | None = None

    def __post_init__(self):
        tokens = self.token_list
        if not isinstance(tokens, (list, tuple)) or len(tokens) < 2 or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"token_list must be a list of at least 2 strings, got {describe(tokens)}")
        self.token_list = list(tokens)
        self.input_size = _positive_int("input_size", self.input_size)
        w = self.ctc_weight
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not 0.0 <= w <= 1.0:
            raise ValueError(f"ctc_weight must be a number in [0, 1], got {describe(w)}")
        self.ctc_weight = float(w)
        self.encoder_conf = encoder_conf_with_defaults(self.encoder, self.encoder_conf)
        if self.ctc_weight < 1.0:
            if self.decoder != "rnn":
                raise UnsupportedError(f"decoder must be 'rnn' (ESPnet's RNNDecoder) when ctc_weight < 1, "
                                       f"got {describe(self.decoder)}")
            self.decoder_conf = decoder_conf_with_defaults(self.decoder_conf)
        else:
            self.decoder, self.decoder_conf = None, {}
        if self.normalize not in (None, "global_mvn"):
            raise UnsupportedError(f"normalize must be null or 'global_mvn', got {describe(self.normalize)}")
        self.normalize_conf = (_completed("normalize_conf", self.normalize_conf, NORMALIZE_DEFAULTS)
                               if self.normalize else {})
        if self.features is not None and not isinstance(self.features, Mapping):
            raise TypeError(f"features must be a mapping or null, got {describe(self.features)}")
        self.features = None if self.features is None else dict(self.features)

    @property
    def vocab_size(self) -> int:
        return len(self.token_list)

    @property
    def eprojs(self) -> int:
        """The encoder's output size (the attention's and CTC's input)."""
        return self.encoder_conf["output_size"]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AsrConfig":
        """From the mapping of an attnkit ``config.yaml``; unknown keys are an UnsupportedError."""
        if not isinstance(d, Mapping):
            raise TypeError(f"config must be a mapping, got {describe(d)}")
        version = d.get("attnkit_asr_model", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise UnsupportedError(f"attnkit_asr_model (the config format) must be {FORMAT_VERSION}, got {version!r}")
        unknown = sorted(set(d) - set(_TOP_KEYS))
        if unknown:
            raise UnsupportedError(f"config must use only the keys {list(_TOP_KEYS)}, got unsupported key(s) {unknown}")
        missing = [k for k in ("token_list", "input_size", "encoder", "ctc_weight") if k not in d]
        if missing:
            raise ValueError(f"config must have the keys {missing}")
        return cls(token_list=d["token_list"], input_size=d["input_size"], encoder=d["encoder"],
                   encoder_conf=d.get("encoder_conf"), decoder=d.get("decoder"), decoder_conf=d.get("decoder_conf"),
                   ctc_weight=d["ctc_weight"], normalize=d.get("normalize"), normalize_conf=d.get("normalize_conf"),
                   features=d.get("features"))

    def to_dict(self) -> dict[str, Any]:
        return {"attnkit_asr_model": FORMAT_VERSION, "token_list": list(self.token_list),
                "input_size": self.input_size, "features": self.features, "normalize": self.normalize,
                "normalize_conf": dict(self.normalize_conf), "encoder": self.encoder,
                "encoder_conf": dict(self.encoder_conf), "decoder": self.decoder,
                "decoder_conf": dict(self.decoder_conf), "ctc_weight": self.ctc_weight}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight of the model (ESPnet2 names) and its shape."""
        shapes: dict[str, tuple[int, ...]] = {}
        if self.normalize == "global_mvn":
            shapes.update({f"normalize.{k}": v for k, v in GlobalMVN.shapes(self.input_size).items()})
        enc = RNNEncoder.shapes(self.encoder, self.encoder_conf, self.input_size)
        shapes.update({f"encoder.{k}": v for k, v in enc.items()})
        if self.decoder is not None:
            dec = rnn_decoder_shapes(self.vocab_size, self.eprojs, self.decoder_conf)
            shapes.update({f"decoder.{k}": v for k, v in dec.items()})
            att = self.build_attention(np.float32)
            shapes.update({f"decoder.att_list.0.{k}": v for k, v in att.param_shapes.items()})
        if self.ctc_weight > 0:
            shapes.update({"ctc.ctc_lo.weight": (self.vocab_size, self.eprojs), "ctc.ctc_lo.bias": (self.vocab_size,)})
        return shapes

    def build_attention(self, dtype):
        """The decoder's attention (``initial_att(...).core``, default-initialised weights)."""
        a = self.decoder_conf["att_conf"]
        return initial_att(a["atype"], self.eprojs, self.decoder_conf["hidden_size"], a["aheads"], a["adim"],
                           a["awin"], a["aconv_chans"], a["aconv_filts"], dtype=dtype).core


class AsrModel:
    """An ESPnet RNN attention encoder-decoder with CTC, on NumPy (float32 or float64).

    ``AsrModel(config, weights, dtype=np.float32)``: config an ``AsrConfig`` or its dict; weights
    a mapping of ESPnet2 names to arrays (any float dtype; cast to ``dtype``), which must be
    exactly ``config.param_shapes()`` (else one ValueError lists the missing, unexpected and
    wrongly shaped ones). Parts: ``normalize`` (``GlobalMVN`` or None), ``encoder``
    (``RNNEncoder``), ``attention`` (the attnkit ``EspnetAttention`` of the decoder, or None),
    ``decoder`` (``attnkit.asr.decoder.RNNDecoder`` on that attention, or None); ids
    ``blank`` = 0 and ``sos`` = ``eos`` = V - 1 as ESPnet.
    """

    def __init__(self, config: AsrConfig | Mapping[str, Any], weights: Mapping[str, Any], *, dtype=np.float32):
        op = "AsrModel"
        self.config = config if isinstance(config, AsrConfig) else AsrConfig.from_dict(config)
        self.dtype = float_dtype(op, dtype)
        c = self.config
        self.param_shapes = c.param_shapes()
        params = checked_params(op, weights, self.param_shapes, self.dtype, arg="weights")
        self.weights = MappingProxyType(params)
        self.normalize = (GlobalMVN(with_prefix(params, "normalize."), size=c.input_size, dtype=self.dtype,
                                    **c.normalize_conf) if c.normalize else None)
        self.encoder = RNNEncoder(with_prefix(params, "encoder."), encoder=c.encoder, input_size=c.input_size,
                                  conf=c.encoder_conf, dtype=self.dtype)
        self.attention = self.decoder = None
        if c.decoder is not None:
            self.attention = c.build_attention(self.dtype)
            self.attention.load_state_dict(params, prefix="decoder.att_list.0.")
            d = c.decoder_conf
            local = {k: v for k, v in with_prefix(params, "decoder.").items() if not k.startswith("att_list.")}
            self.decoder = RNNDecoder(local, vocab_size=c.vocab_size, eprojs=c.eprojs, dunits=d["hidden_size"],
                                      dlayers=d["num_layers"], rnn_type=d["rnn_type"],
                                      context_residual=d["context_residual"], attention=self.attention,
                                      dtype=self.dtype)

    # -- identity ---------------------------------------------------------------------------------

    @property
    def token_list(self) -> list[str]:
        return self.config.token_list

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def blank(self) -> int:
        return 0

    @property
    def sos(self) -> int:
        return self.vocab_size - 1

    @property
    def eos(self) -> int:
        return self.vocab_size - 1

    @property
    def has_ctc(self) -> bool:
        return self.config.ctc_weight > 0

    # -- files ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, directory, *, dtype=np.float32) -> "AsrModel":
        """Reads attnkit's model directory (``config.yaml`` + ``model.safetensors``); weights stored
        in float16 are upcast to ``dtype``."""
        import yaml
        from safetensors.numpy import load_file

        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"AsrModel.load: {directory} must be an attnkit model directory "
                                        f"holding {CONFIG_FILE} and {WEIGHTS_FILE}; {directory / name} is missing")
        with open(directory / CONFIG_FILE, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        try:
            weights = load_file(str(directory / WEIGHTS_FILE))
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise ValueError(f"AsrModel.load: {directory / WEIGHTS_FILE} is not a readable safetensors file: "
                             f"{e}") from e
        return cls(config, weights, dtype=dtype)

    def save(self, directory, *, dtype=np.float32) -> Path:
        """Writes ``config.yaml`` and ``model.safetensors`` into ``directory`` (created if needed),
        the weights in ``dtype`` (float32, float16 or float64); the GlobalMVN statistics stay
        float32 (160 numbers; float16 would cost the features precision for nothing)."""
        import yaml
        from safetensors.numpy import save_file

        store = np.dtype(dtype)
        if store not in (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"AsrModel.save: dtype must be float16, float32 or float64, got {store}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keep_float32 = lambda name: name.startswith("normalize.") and store.itemsize < 4
        tensors = {k: np.ascontiguousarray(v, np.float32 if keep_float32(k) else store) for k, v in self.weights.items()}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "attnkit-asr", "version": "1"})
        with open(directory / CONFIG_FILE, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.config.to_dict(), f, sort_keys=False, allow_unicode=True)
        return directory

    # -- compute ----------------------------------------------------------------------------------

    def encode(self, feats: np.ndarray, lengths=None) -> tuple[np.ndarray, np.ndarray]:
        """feats ``[B, T, F]`` (float32/float64, cast to the model's dtype), lengths ``[B]`` or None
        (all T) -> (enc ``[B, T', E]``, enc_lengths ``[B]`` int64), as ESPnet2's
        ``ESPnetASRModel.encode`` (normalize, then the encoder) on each utterance; T' =
        max(enc_lengths) and enc = 0 past each length. A CuPy feats runs on its GPU (enc a CuPy
        array there, enc_lengths on the host: attnkit.asr.device_encoder)."""
        op = "AsrModel.encode"
        if is_device_array(feats):
            return self.on_device(feats).encode(feats, lengths)
        feats, lengths = padded_batch(op, feats, lengths, self.config.input_size, name="feats", what=" (input_size)")
        x = feats.astype(self.dtype, copy=False)
        if self.normalize is not None:
            x, lengths = self.normalize(x, lengths)
        return self.encoder(x, lengths)

    def ctc_log_probs(self, enc: np.ndarray) -> np.ndarray:
        """enc ``[B, T', E]`` -> log_softmax(enc W^T + b) ``[B, T', V]`` (ESPnet's
        ``CTC.log_softmax``); rows past the lengths are computed too and are to be ignored. A CuPy
        enc gives a CuPy array, computed on its GPU."""
        op = "AsrModel.ctc_log_probs"
        if not self.has_ctc:
            raise UnsupportedError(f"{op}: this model has no CTC branch (ctc_weight = {self.config.ctc_weight})")
        if is_device_array(enc):
            if enc.ndim != 3 or enc.shape[2] != self.config.eprojs:
                raise ValueError(f"{op}: enc must have shape [B, T', {self.config.eprojs}], got {describe(enc)}")
            return self.on_device(enc).ctc_log_probs(enc)
        enc = host_float_array(op, "enc", enc, (3,))
        if enc.shape[2] != self.config.eprojs:
            raise ValueError(f"{op}: enc must have shape [B, T', {self.config.eprojs}], got {enc.shape}")
        return log_softmax(linear(enc.astype(self.dtype, copy=False), self.weights["ctc.ctc_lo.weight"],
                                  self.weights["ctc.ctc_lo.bias"]))

    def on_device(self, like):
        """This model's normalisation, encoder and CTC layer on the GPU that holds CuPy array
        ``like``: an ``attnkit.asr.device_encoder.DeviceEncoder``, weights copied once per device
        (``encode`` and ``ctc_log_probs`` use it for CuPy inputs; ``self.decoder.on_device`` is the
        decoder's twin)."""
        from attnkit.asr import device_encoder  # it builds on this module's parts

        return device_encoder.on_device(self, like)

    def __repr__(self) -> str:
        c = self.config
        n = sum(math.prod(s) for s in self.param_shapes.values())
        return (f"AsrModel(encoder={c.encoder}, decoder={c.decoder}, vocab={c.vocab_size}, eprojs={c.eprojs}, "
                f"params={n}, dtype={self.dtype.name})")
