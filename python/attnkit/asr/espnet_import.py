"""ESPnet -> attnkit: an ``AsrModel`` from an ESPnet2 or espnet1 RNN attention experiment.

ESPnet2: the training ``config.yaml`` (``frontend: null`` with ``input_size``, ``normalize``,
``encoder: rnn | vgg_rnn``, ``decoder: rnn``, ``model_conf.ctc_weight``, ``token_list``, and
attnkit's ``attnkit_features``) and ``model.pth`` (``torch.save(model.state_dict())``): the
state_dict names are already attnkit's. espnet1: ``model.json`` (``[idim, odim, args]``) and
``model.acc.best`` or a trainer snapshot; the names are mapped onto ESPnet2's (``enc.enc.`` ->
``encoder.enc.``, ``dec.att.0.`` -> ``decoder.att_list.0.``, ``dec.`` -> ``decoder.``).

Weights are read by ``attnkit.asr.torch_checkpoint`` (no PyTorch, no pickled code). Whatever
attnkit cannot run is an UnsupportedError naming the config entry.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from attnkit._arrays import describe
from attnkit._core import UnsupportedError
from attnkit.asr.encoder import espnet1_encoder_conf
from attnkit.asr.model import AsrConfig, AsrModel
from attnkit.asr.torch_checkpoint import read_state_dict

#: ESPnet2 defaults for the keys that decide the model when a config leaves them out.
_ESPNET2_DEFAULTS = {"frontend": "default", "normalize": "utterance_mvn", "ctc_weight": 0.5}
#: ESPnet2 config entries that must be null (or absent) for attnkit to run the model.
_MUST_BE_NULL = ("preencoder", "postencoder")
#: espnet1 argument defaults (espnet/nets/pytorch_backend/rnn/argument.py, e2e_asr.py).
_ESPNET1_DEFAULTS = {"etype": "blstmp", "elayers": 4, "eunits": 300, "eprojs": 320, "subsample": "1",
                     "dtype": "lstm", "dlayers": 1, "dunits": 320, "atype": "dot", "adim": 320, "awin": 5,
                     "aheads": 4, "aconv_chans": -1, "aconv_filts": 100, "mtlalpha": 0.5,
                     "context_residual": False, "replace_sos": False, "num_encs": 1}


def _token_list(value, config_dir: Path | None) -> list[str]:
    """ESPnet2's ``token_list``: inline, or a file of one token per line (relative paths are
    tried from the working directory, then from the config's directory)."""
    if isinstance(value, (list, tuple)):
        return [str(t) for t in value]
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file() and config_dir is not None and (config_dir / value).is_file():
            path = config_dir / value
        if not path.is_file():
            raise FileNotFoundError(f"token_list names the file {value!r}, which does not exist")
        return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    raise ValueError(f"token_list must be a list of tokens or a file name, got {describe(value)}")


def espnet2_config(train: Mapping[str, Any], *, config_dir: Path | None = None) -> AsrConfig:
    """The ``AsrConfig`` of an ESPnet2 ASR training config (the mapping of its config.yaml)."""
    if not isinstance(train, Mapping):
        raise TypeError(f"the ESPnet2 config must be a mapping, got {describe(train)}")
    get = lambda key: train.get(key, _ESPNET2_DEFAULTS.get(key))
    if get("model") not in (None, "espnet"):
        raise UnsupportedError(f"model must be 'espnet' (ESPnetASRModel), got {describe(get('model'))}")
    if get("frontend") is not None:
        raise UnsupportedError(f"frontend must be null (features computed outside the model, described by "
                               f"attnkit_features), got {describe(get('frontend'))}")
    for key in _MUST_BE_NULL:
        if get(key) is not None:
            raise UnsupportedError(f"{key} must be null, got {describe(get(key))}")
    if "input_size" not in train or "token_list" not in train:
        raise ValueError("the ESPnet2 config must have input_size (frontend: null) and token_list")
    normalize_conf = dict(train.get("normalize_conf") or {})
    model_conf = dict(train.get("model_conf") or {})
    return AsrConfig(
        token_list=_token_list(train["token_list"], config_dir), input_size=train["input_size"],
        encoder=train.get("encoder"), encoder_conf=train.get("encoder_conf"),
        decoder=train.get("decoder"), decoder_conf=train.get("decoder_conf"),
        ctc_weight=model_conf.get("ctc_weight", _ESPNET2_DEFAULTS["ctc_weight"]),
        normalize=get("normalize"),
        normalize_conf={k: normalize_conf[k] for k in ("norm_means", "norm_vars") if k in normalize_conf},
        features=train.get("attnkit_features"))


def espnet1_config(model_json: Any) -> AsrConfig:
    """The ``AsrConfig`` of an espnet1 ``model.json`` (``[idim, odim, args]``) of the RNN E2E model."""
    if not (isinstance(model_json, (list, tuple)) and len(model_json) == 3 and isinstance(model_json[2], Mapping)):
        raise ValueError(f"an espnet1 model.json must hold [idim, odim, args], got {describe(model_json)}")
    idim, odim, given = model_json
    args = {**_ESPNET1_DEFAULTS, **given}
    module = args.get("model_module") or "espnet.nets.pytorch_backend.e2e_asr:E2E"
    if module != "espnet.nets.pytorch_backend.e2e_asr:E2E":
        raise UnsupportedError(f"model_module must be espnet.nets.pytorch_backend.e2e_asr:E2E (the RNN "
                               f"attention model), got {module!r}")
    if args["num_encs"] != 1 or args.get("use_frontend"):
        raise UnsupportedError(f"num_encs must be 1 and use_frontend false, got {args['num_encs']} and "
                               f"{args.get('use_frontend')}")
    tokens = args.get("char_list")
    if not isinstance(tokens, list) or len(tokens) != odim:
        raise ValueError(f"args.char_list must list the odim = {odim} tokens, got {describe(tokens)}")
    etype, elayers = args["etype"], int(args["elayers"])
    # espnet1's get_subsample (mode asr, arch rnn): factors only for [^vgg]...p etypes.
    subsample = [1] * (elayers + 1)
    if etype.endswith("p") and not etype.startswith("vgg"):
        given_factors = str(args["subsample"]).split("_")
        for j in range(min(elayers + 1, len(given_factors))):
            subsample[j] = int(given_factors[j])
    encoder, encoder_conf = espnet1_encoder_conf(etype, elayers, args["eunits"], args["eprojs"], subsample)
    att_conf = {k: args[k] for k in ("atype", "adim", "awin", "aheads", "aconv_chans", "aconv_filts")}
    decoder_conf = {"rnn_type": args["dtype"], "num_layers": args["dlayers"], "hidden_size": args["dunits"],
                    "context_residual": bool(args["context_residual"]), "replace_sos": bool(args["replace_sos"]),
                    "att_conf": att_conf}
    return AsrConfig(token_list=tokens, input_size=idim, encoder=encoder, encoder_conf=encoder_conf,
                     decoder="rnn", decoder_conf=decoder_conf, ctc_weight=float(args["mtlalpha"]))


def espnet1_weights(state_dict: Mapping[str, np.ndarray], config: AsrConfig) -> dict[str, np.ndarray]:
    """An espnet1 E2E state_dict under ESPnet2's names. The attention is registered twice in
    espnet1 (``att.0.`` and ``dec.att.0.``): the copies must agree and one is kept. The CTC or
    decoder weights of a model trained without them (mtlalpha 0 or 1) are left out."""
    out: dict[str, np.ndarray] = {}
    shared: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if key.startswith("att."):
            shared[key] = value
        elif key.startswith("enc.enc."):
            out["encoder." + key[len("enc."):]] = value
        elif key.startswith("dec.att."):
            out["decoder.att_list." + key[len("dec.att."):]] = value
        elif key.startswith("dec."):
            out["decoder." + key[len("dec."):]] = value
        else:
            out[key] = value
    for key, value in shared.items():
        twin = "decoder.att_list." + key[len("att."):]
        if twin not in out:
            out[twin] = value
        elif not (out[twin].shape == value.shape and np.array_equal(out[twin], value)):
            raise ValueError(f"the espnet1 state_dict must hold equal tensors under {key!r} and 'dec.{key}', "
                             f"got different ones")
    if config.ctc_weight == 0:
        out = {k: v for k, v in out.items() if not k.startswith("ctc.")}
    if config.decoder is None:
        out = {k: v for k, v in out.items() if not k.startswith("decoder.")}
    return out


def convert_espnet(config_path, weights_path, out_dir=None, *, dtype=np.float32) -> AsrModel:
    """An ``AsrModel`` (float32) from an ESPnet experiment; saved to ``out_dir`` (weights stored in
    ``dtype``: float32 or float16) when given.

    ``config_path``: an ESPnet2 ``config.yaml`` (``.yaml`` / ``.yml``) or an espnet1
    ``model.json`` (``.json``); ``weights_path``: the matching ``torch.save`` file.
    """
    import yaml

    config_path, weights_path = Path(config_path), Path(weights_path)
    if not config_path.is_file():
        raise FileNotFoundError(f"convert_espnet: config {config_path} does not exist")
    text = config_path.read_text(encoding="utf-8")
    state_dict = read_state_dict(weights_path)
    if config_path.suffix == ".json":
        config = espnet1_config(json.loads(text))
        weights = espnet1_weights(state_dict, config)
    else:
        config = espnet2_config(yaml.safe_load(text), config_dir=config_path.parent)
        weights = state_dict
    model = AsrModel(config, weights)
    if out_dir is not None:
        model.save(out_dir, dtype=dtype)
    return model
