"""ESPnet's RNN encoders in NumPy: the ``RNN`` and ``RNNP`` layers and the encoders built on them.

Sources (espnet 202511): espnet/nets/pytorch_backend/rnn/encoders.py (``RNN``, ``RNNP``,
``VGG2L``, espnet1 ``Encoder``), espnet2/asr/encoder/rnn_encoder.py (``RNNEncoder``) and
vgg_rnn_encoder.py (``VGGRNNEncoder``). Weights keep ESPnet's state_dict names; shapes use
B (batch), T (frames), F (features), H (cell units), P (projection / output units).

Batches: lengths may come in any order (ESPnet's ``pack_padded_sequence`` wants them sorted; the
result per utterance is the same), frames past a length are never read and come out as 0, and the
output has ``max(output lengths)`` frames, as ``pad_packed_sequence`` gives.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from attnkit._arrays import describe
from attnkit._core import UnsupportedError
from attnkit.asr.params import checked_params, float_dtype, padded_batch, with_prefix
from attnkit.asr.rnn import PackedRNN, packed_rnn_shapes
from attnkit.asr.subsampling import Conv2dSubsampling, VGG2L, ceil_half, zero_past
from attnkit._linear import PackedWeight, linear


def split_typ(op: str, typ: str) -> tuple[str, bool]:
    """ESPnet's layer type ``lstm``, ``gru``, ``blstm`` or ``bgru`` -> (cell, bidirectional)."""
    if typ not in ("lstm", "gru", "blstm", "bgru"):
        raise ValueError(f"{op}: typ must be one of ['blstm', 'bgru', 'lstm', 'gru'], got {describe(typ)}")
    return typ.lstrip("b"), typ.startswith("b")


class RNN:
    """ESPnet's ``RNN(idim, elayers, cdim, hdim, dropout, typ)``: one multi-layer
    ``torch.nn.LSTM`` / ``GRU`` over packed sequences, then y = tanh(l_last(out)).

    Parameters: ``nbrnn.weight_ih_l{k}[_reverse]`` ... (torch's names), ``l_last.weight [P, D*H]``,
    ``l_last.bias [P]``. Call: x ``[B, T, idim]``, lengths ``[B]`` -> (y ``[B, max(lengths), P]``,
    lengths); y = 0 past each length (ESPnet leaves tanh(bias) there and masks it later).
    """

    def __init__(self, params: Mapping[str, Any], *, idim: int, elayers: int, cdim: int, hdim: int,
                 typ: str = "blstm", dtype=np.float32):
        op = type(self).__name__
        cell, bidir = split_typ(op, typ)
        self.dtype = float_dtype(op, dtype)
        self.idim, self.hdim = idim, hdim
        self.param_shapes = self.shapes(idim, elayers, cdim, hdim, typ)
        self.params = checked_params(op, params, self.param_shapes, self.dtype)
        self.rnn = PackedRNN(with_prefix(self.params, "nbrnn."), input_size=idim, hidden_size=cdim,
                             num_layers=elayers, bidirectional=bidir, rnn_type=cell, dtype=self.dtype)
        self._w_last = PackedWeight(self.params["l_last.weight"])

    @staticmethod
    def shapes(idim: int, elayers: int, cdim: int, hdim: int, typ: str) -> dict[str, tuple[int, ...]]:
        cell, bidir = split_typ("RNN", typ)
        shapes = {f"nbrnn.{k}": v for k, v in packed_rnn_shapes(idim, cdim, elayers, bidir, cell).items()}
        return {**shapes, "l_last.weight": (hdim, cdim * (2 if bidir else 1)), "l_last.bias": (hdim,)}

    def output_lengths(self, lengths: np.ndarray) -> np.ndarray:
        return lengths

    def __call__(self, x: np.ndarray, lengths) -> tuple[np.ndarray, np.ndarray]:
        ys = self.rnn(x, lengths)
        lengths = np.asarray(lengths, np.int64)
        y = linear(ys, self._w_last, self.params["l_last.bias"], tanh=True)
        return zero_past(y, lengths), lengths


class RNNP:
    """ESPnet's ``RNNP(idim, elayers, cdim, hdim, subsample, dropout, typ)``: per layer i, a
    one-layer ``torch.nn.LSTM`` / ``GRU`` over packed sequences, then frame subsampling by
    ``subsample[i]`` (frames 0, s, 2s, ...; lengths become (L + 1) // s, ESPnet's rule, so s = 3
    drops the last frame of a length-4 utterance), then the projection ``bt{i}`` with tanh on
    every layer but the last.

    ``subsample``: one factor per layer (ESPnet's array without its unused first entry).
    Parameters: ``birnn{i}.*`` (``rnn{i}.*`` when unidirectional; torch's names with ``_l0``),
    ``bt{i}.weight [P, D*H]``, ``bt{i}.bias [P]``. Call: x ``[B, T, idim]``, lengths ``[B]`` ->
    (y ``[B, max(out lengths), P]``, out lengths); y = 0 past each length. A length that the
    subsampling would bring to 0 is a ValueError (ESPnet fails in ``pack_padded_sequence``).
    """

    def __init__(self, params: Mapping[str, Any], *, idim: int, elayers: int, cdim: int, hdim: int,
                 subsample: Sequence[int], typ: str = "blstm", dtype=np.float32):
        op = type(self).__name__
        cell, bidir = split_typ(op, typ)
        self.dtype = float_dtype(op, dtype)
        subsample = [int(s) for s in subsample]
        if len(subsample) != elayers or min(subsample) < 1:
            raise ValueError(f"{op}: subsample must hold one factor >= 1 per layer ({elayers}), got {subsample}")
        self.idim, self.hdim, self.subsample = idim, hdim, subsample
        self.param_shapes = self.shapes(idim, elayers, cdim, hdim, typ)
        self.params = checked_params(op, params, self.param_shapes, self.dtype)
        name = "birnn" if bidir else "rnn"
        self.layers = [PackedRNN(with_prefix(self.params, f"{name}{i}."), input_size=idim if i == 0 else hdim,
                                 hidden_size=cdim, bidirectional=bidir, rnn_type=cell, dtype=self.dtype)
                       for i in range(elayers)]
        self._w_bt = [PackedWeight(self.params[f"bt{i}.weight"]) for i in range(elayers)]

    @staticmethod
    def shapes(idim: int, elayers: int, cdim: int, hdim: int, typ: str) -> dict[str, tuple[int, ...]]:
        cell, bidir = split_typ("RNNP", typ)
        name, shapes = "birnn" if bidir else "rnn", {}
        for i in range(elayers):
            inputs = idim if i == 0 else hdim
            shapes.update({f"{name}{i}.{k}": v for k, v in packed_rnn_shapes(inputs, cdim, 1, bidir, cell).items()})
            shapes[f"bt{i}.weight"] = (hdim, cdim * (2 if bidir else 1))
            shapes[f"bt{i}.bias"] = (hdim,)
        return shapes

    def output_lengths(self, lengths: np.ndarray) -> np.ndarray:
        for s in self.subsample:
            if s > 1:
                lengths = (lengths + 1) // s
        return lengths

    def __call__(self, x: np.ndarray, lengths) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.asarray(lengths, np.int64)
        if self.output_lengths(lengths).min() < 1:
            raise ValueError(f"RNNP: lengths must keep a frame through the subsampling {self.subsample} "
                             f"(L -> (L + 1) // s), got {lengths.tolist()}")
        last = len(self.layers) - 1
        for i, (rnn, s) in enumerate(zip(self.layers, self.subsample)):
            ys = rnn(x, lengths)
            if s > 1:
                ys, lengths = ys[:, ::s], (lengths + 1) // s
            x = linear(ys, self._w_bt[i], self.params[f"bt{i}.bias"], tanh=i < last)
        return zero_past(x[:, : int(lengths.max())], lengths), lengths


#: ESPnet2 ``RNNEncoder`` / ``VGGRNNEncoder`` constructor defaults (espnet 202511), plus attnkit's
#: documented extension of ``rnn``: an optional ``input_layer: conv2d`` (ESPnet's
#: ``Conv2dSubsampling`` named ``embed``, with ``input_layer_channels`` x 3x3 convolutions and a
#: Linear to ``input_layer_units``; ``input_layer_positional_encoding`` adds ESPnet's
#: PositionalEncoding). ``dropout`` is accepted and unused (inference).
ENCODER_DEFAULTS: dict[str, dict[str, Any]] = {
    "rnn": {"rnn_type": "lstm", "bidirectional": True, "use_projection": True, "num_layers": 4,
            "hidden_size": 320, "output_size": 320, "dropout": 0.0, "subsample": [2, 2, 1, 1],
            "input_layer": None, "input_layer_channels": None, "input_layer_units": None,
            "input_layer_positional_encoding": False},
    "vgg_rnn": {"rnn_type": "lstm", "bidirectional": True, "use_projection": True, "num_layers": 4,
                "hidden_size": 320, "output_size": 320, "dropout": 0.0, "in_channel": 1},
}


def encoder_conf_with_defaults(encoder: str, conf: Mapping[str, Any] | None) -> dict[str, Any]:
    """``encoder_conf`` completed with the defaults of ``encoder`` (``rnn`` or ``vgg_rnn``).

    An unknown encoder or key is an UnsupportedError naming it. ``rnn`` with
    ``input_layer: conv2d``: ``input_layer_units`` defaults to ``output_size`` and
    ``input_layer_channels`` to ``input_layer_units`` (ESPnet's Conv2dSubsampling: C = U).
    """
    if encoder not in ENCODER_DEFAULTS:
        raise UnsupportedError(f"encoder must be one of {sorted(ENCODER_DEFAULTS)} (ESPnet's RNN encoders), "
                               f"got {describe(encoder)}")
    conf = {} if conf is None else dict(conf)
    unknown = sorted(set(conf) - set(ENCODER_DEFAULTS[encoder]))
    if unknown:
        raise UnsupportedError(f"encoder_conf of encoder {encoder!r} must use only the keys "
                               f"{sorted(ENCODER_DEFAULTS[encoder])}, got unsupported key(s) {unknown}")
    full = {**ENCODER_DEFAULTS[encoder], **conf}
    if full["rnn_type"] not in ("lstm", "gru"):
        raise UnsupportedError(f"encoder_conf.rnn_type must be 'lstm' or 'gru', got {describe(full['rnn_type'])}")
    if encoder == "rnn":
        if full["input_layer"] not in (None, "conv2d"):
            raise UnsupportedError(f"encoder_conf.input_layer must be null or 'conv2d', "
                                   f"got {describe(full['input_layer'])}")
        if full["input_layer"] == "conv2d":
            full["input_layer_units"] = full["input_layer_units"] or full["output_size"]
            full["input_layer_channels"] = full["input_layer_channels"] or full["input_layer_units"]
        if full["subsample"] is not None:
            full["subsample"] = [int(s) for s in full["subsample"]]
    return full


def _layout(encoder: str, conf: Mapping[str, Any], input_size: int) -> tuple[str | None, str, int]:
    """(front end: ``vgg2l``, ``conv2d`` or None; the RNN's name prefix; the RNN's input size).
    VGGRNNEncoder registers VGG2L as ``enc.0`` and the RNN as ``enc.1``; attnkit's conv2d input
    layer is ``embed``, beside the RNN at ``enc.0``."""
    if encoder == "vgg_rnn":
        return "vgg2l", "enc.1.", VGG2L.output_size(input_size, conf["in_channel"])
    if conf["input_layer"] == "conv2d":
        return "conv2d", "enc.0.", conf["input_layer_units"]
    return None, "enc.0.", input_size


class RNNEncoder:
    """ESPnet2's ``RNNEncoder`` (``encoder: rnn``) and ``VGGRNNEncoder`` (``encoder: vgg_rnn``),
    which are also espnet1's ``Encoder`` for every etype (see ``espnet1_encoder_conf``).

    ``params``: the encoder's state_dict names (``enc.0.nbrnn.weight_ih_l0``, ``embed.conv.0.weight``
    ...: the model's ``encoder.`` prefix removed). Front end, then ``RNN`` (``use_projection``
    false) or ``RNNP`` (true); subsampling: ``rnn`` per layer from ``subsample`` (RNNP only, as
    ESPnet2), ``vgg_rnn`` 4x in VGG2L. Call: x ``[B, T, input_size]``, lengths ``[B]`` or None ->
    (y ``[B, T', output_size]``, lengths') with T' = max(lengths') and y = 0 past each length.
    """

    def __init__(self, params: Mapping[str, Any], *, encoder: str = "rnn", input_size: int,
                 conf: Mapping[str, Any] | None = None, dtype=np.float32):
        op = type(self).__name__
        self.dtype = float_dtype(op, dtype)
        self.encoder, self.input_size = encoder, input_size
        self.conf = encoder_conf_with_defaults(encoder, conf)
        self.output_size = self.conf["output_size"]
        self.param_shapes = self.shapes(encoder, self.conf, input_size)
        params = checked_params(op, params, self.param_shapes, self.dtype)
        c = self.conf
        front, rnn_prefix, rnn_input = _layout(encoder, c, input_size)
        self.front = None
        if front == "vgg2l":
            self.front = VGG2L(with_prefix(params, "enc.0."), idim=input_size, in_channel=c["in_channel"],
                               dtype=self.dtype)
        elif front == "conv2d":
            self.front = Conv2dSubsampling(with_prefix(params, "embed."), idim=input_size,
                                           channels=c["input_layer_channels"], units=c["input_layer_units"],
                                           positional_encoding=c["input_layer_positional_encoding"], dtype=self.dtype)
        typ = ("b" if c["bidirectional"] else "") + c["rnn_type"]
        dims = dict(idim=rnn_input, elayers=c["num_layers"], cdim=c["hidden_size"], hdim=c["output_size"], typ=typ)
        if c["use_projection"]:
            self.rnn = RNNP(with_prefix(params, rnn_prefix), subsample=self._layer_subsample(encoder, c), **dims,
                            dtype=self.dtype)
        else:
            self.rnn = RNN(with_prefix(params, rnn_prefix), **dims, dtype=self.dtype)
        self.params = params

    @staticmethod
    def _layer_subsample(encoder: str, conf: Mapping[str, Any]) -> list[int]:
        """ESPnet2's per-layer factors: ``subsample[:num_layers]`` padded with 1 (vgg_rnn: all 1)."""
        n = conf["num_layers"]
        given = list(conf.get("subsample") or [])[:n] if encoder == "rnn" else []
        return given + [1] * (n - len(given))

    @classmethod
    def shapes(cls, encoder: str, conf: Mapping[str, Any], input_size: int) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes of an encoder (``conf`` completed with its defaults)."""
        c = encoder_conf_with_defaults(encoder, conf)
        front, rnn_prefix, rnn_input = _layout(encoder, c, input_size)
        shapes = {}
        if front == "vgg2l":
            shapes = {f"enc.0.{k}": v for k, v in VGG2L.shapes(c["in_channel"]).items()}
        elif front == "conv2d":
            shapes = {f"embed.{k}": v for k, v in Conv2dSubsampling.shapes(
                input_size, c["input_layer_channels"], c["input_layer_units"]).items()}
        typ = ("b" if c["bidirectional"] else "") + c["rnn_type"]
        layer = RNNP if c["use_projection"] else RNN
        rnn = layer.shapes(rnn_input, c["num_layers"], c["hidden_size"], c["output_size"], typ)
        return {**shapes, **{rnn_prefix + k: v for k, v in rnn.items()}}

    def output_lengths(self, lengths) -> np.ndarray:
        """The output lengths for input lengths ``[B]`` (no check)."""
        lengths = np.asarray(lengths, np.int64)
        if isinstance(self.front, VGG2L):
            lengths = ceil_half(ceil_half(lengths))
        elif isinstance(self.front, Conv2dSubsampling):
            lengths = Conv2dSubsampling.reduce(lengths)
        return self.rnn.output_lengths(lengths)

    def min_length(self) -> int:
        """The shortest input that leaves at least one output frame."""
        n = 1
        while self.output_lengths(np.array([n]))[0] < 1:
            n += 1
        return n

    def __call__(self, x: np.ndarray, lengths=None) -> tuple[np.ndarray, np.ndarray]:
        op = type(self).__name__
        x, lengths = padded_batch(op, x, lengths, self.input_size, what=" (input_size)")
        if self.output_lengths(lengths).min() < 1:
            raise ValueError(f"{op}: lengths must be >= {self.min_length()} (shorter input leaves no encoder "
                             f"frame), got {lengths.tolist()}")
        x = zero_past(x[:, : int(lengths.max())].astype(self.dtype), lengths)
        if self.front is not None:
            x, lengths = self.front(x, lengths)
        return self.rnn(x, lengths)


def espnet1_encoder_conf(etype: str, elayers: int, eunits: int, eprojs: int,
                         subsample: Sequence[int] | None = None) -> tuple[str, dict[str, Any]]:
    """espnet1's ``Encoder(etype, idim, elayers, eunits, eprojs, subsample, dropout)`` as the
    equivalent (encoder, encoder_conf) of ``RNNEncoder``: ``[vgg]{lstm,gru,blstm,bgru}[p]``.

    ``subsample``: espnet1's array of elayers + 1 factors (``get_subsample``; vgg types use
    none). Its first entry strides the input frames in espnet1's ``encode``, which ESPnet then
    pairs with the unstrided lengths: an entry other than 1 is an UnsupportedError.
    """
    vgg, projected = etype.startswith("vgg"), etype.endswith("p")
    typ = etype[3:] if vgg else etype
    typ = typ[:-1] if projected else typ
    if typ not in ("lstm", "gru", "blstm", "bgru"):
        raise UnsupportedError(f"etype must be [vgg]{{lstm,gru,blstm,bgru}}[p], got {describe(etype)}")
    conf = {"rnn_type": typ.lstrip("b"), "bidirectional": typ.startswith("b"), "use_projection": projected,
            "num_layers": int(elayers), "hidden_size": int(eunits), "output_size": int(eprojs)}
    factors = [1] * (int(elayers) + 1) if subsample is None else [int(s) for s in subsample]
    if factors[0] != 1:
        raise UnsupportedError(f"subsample[0] (espnet1's input frame stride) must be 1, got {factors[0]}")
    if vgg:
        if any(s != 1 for s in factors):
            raise UnsupportedError(f"subsample of a vgg etype must be all 1 (espnet1 ignores it), got {factors}")
        return "vgg_rnn", conf
    return "rnn", {**conf, "subsample": factors[1:] if projected else None}
