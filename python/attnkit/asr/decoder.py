"""ESPnet's RNN attention decoder (espnet1 ``Decoder``, espnet2 ``RNNDecoder``) on NumPy.

Spec: /work/shared/spec/espnet_attention.md, sections 3.1-3.2 and quirk 4.14. One step, for N rows
(``rows[n]`` = the utterance of row n, so a whole beam shares one encoder cache):

    1. ctx, a = Att(prepared, z^0_prev, a_prev)   the BOTTOM layer's previous state is the query,
                                                   ESPnet's default scaling (never passed)
    2. x = [E[y] ; ctx]                            embedding first, then the context
    3. z^0 = Cell_0(x, z^0_prev); z^l = Cell_l(z^{l-1}, z^l_prev)
    4. log p = log_softmax(output(z^{L-1}))        or output([z^{L-1} ; ctx]) with context_residual

Cell_0's input product is split by columns, ``x W_ih^T = E[y] W_emb^T + ctx W_ctx^T``, and the
first half is tabulated once per token (``[V, G*Dz]``), so a step's embedding costs a row gather.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy as np

from attnkit import _core
from attnkit._arrays import c_aligned, describe, host_float_array, int_range
from attnkit._core import UnsupportedError
from attnkit.asr._rows import row_index, select_rows
from attnkit.asr.rnn import gru_cell, lstm_cell, lstm_from_gates
from attnkit.espnet import AttForwardTA, EspnetAttention, GDCAttLoc, NoAtt, Prepared, compat, initial_att
from attnkit._linear import PackedWeight, linear

#: Gate count per RNN type (PyTorch layout: LSTM i, f, g, o; GRU r, z, n).
RNN_GATES = {"lstm": 4, "gru": 3}

#: espnet2 ``build_attention_list`` defaults, used for keys missing from ``att_conf``.
ATT_CONF_DEFAULTS = {"atype": "location", "num_att": 1, "num_encs": 1, "aheads": 4, "adim": 320, "awin": 5,
                     "aconv_chans": 10, "aconv_filts": 100, "han_mode": False}
_HAN_KEYS = ("han_type", "han_heads", "han_dim", "han_conv_chans", "han_conv_filts", "han_win")

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis (max-subtracted, as torch), into a new array. NumPy arrays go
    through the C++ kernel (NumPy's float32 exp is scalar here: ~150 us of a beam-10 step at
    V = 5000, the kernel ~30-40, benchmarks/NOTES.md); CuPy arrays through the array calls below."""
    if isinstance(x, np.ndarray) and x.dtype in _DTYPES and x.ndim >= 1 and x.size:
        x2 = c_aligned(x.reshape(-1, x.shape[-1]))
        y = np.empty(x2.shape, x.dtype)
        _core.log_softmax(x2, y)
        return y.reshape(x.shape)
    y = x - x.max(axis=-1, keepdims=True)
    y -= np.log(np.exp(y).sum(axis=-1, keepdims=True))
    return y


@dataclass(frozen=True, eq=False)
class DecoderPrepared:
    """What ``RNNDecoder.prepare`` returns: the attention's per-utterance cache, plus GDCAttLoc's
    transition probabilities ``trans_token [B, T]`` (None for every other attention)."""

    attention: Prepared
    trans_token: np.ndarray | None = None

    @property
    def batch(self) -> int:
        return self.attention.batch

    @property
    def frames(self) -> int:
        return self.attention.frames

    @property
    def lengths(self) -> np.ndarray:
        return self.attention.lengths


class DecoderState(NamedTuple):
    """The decoder's state for N rows: per layer h ``[N, Dz]`` (and c ``[N, Dz]`` for LSTM,
    None for GRU), and the attention's state (its kind depends on the attention class)."""

    h: tuple[np.ndarray, ...]
    c: tuple[np.ndarray, ...] | None
    attention: Any


class RNNDecoder:
    """ESPnet's RNN decoder with one attention module (single encoder, no HAN).

    ``params``: decoder-local ESPnet names -> arrays (NumPy, or CPU torch tensors):
    ``embed.weight [V, De]``; ``decoder.0.weight_ih [G*Dz, De+E]`` (columns: embedding, then
    context), ``decoder.l.weight_ih [G*Dz, Dz]`` (l >= 1), ``decoder.l.weight_hh [G*Dz, Dz]``,
    ``decoder.l.bias_ih``, ``decoder.l.bias_hh [G*Dz]``; ``output.weight [V, Dz]`` (``[V, Dz+E]``
    with context_residual), ``output.bias [V]``; G = 4 (LSTM) or 3 (GRU). ESPnet's embedding
    has De = Dz; another De is accepted (taken from ``embed.weight``). Keys of the attention
    (``att.*``, ``att_list.*``) are ignored: ``attention`` comes with its weights loaded.

    ``attention``: an attnkit ESPnet attention module (``attnkit.espnet.AttLoc`` ...; a compat
    wrapper is unwrapped to its ``.core``) in the same dtype. sos = eos = V - 1, blank = 0.
    AttForwardTA (a TTS class) gets the one-hot of the fed token as ``out_prev`` (so its odim
    must be V); GDCAttLoc needs ``trans_token`` at ``prepare``.
    """

    def __init__(self, params: Mapping[str, Any], *, vocab_size: int, eprojs: int, dunits: int, dlayers: int,
                 rnn_type: str = "lstm", context_residual: bool = False, attention, dtype=np.float32):
        op = "RNNDecoder"
        dtype = np.dtype(dtype)
        if dtype not in _DTYPES:
            raise TypeError(f"{op}: dtype must be float32 or float64, got {dtype}")
        for name, value in (("vocab_size", vocab_size), ("eprojs", eprojs), ("dunits", dunits), ("dlayers", dlayers)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{op}: {name} must be a positive integer, got {describe(value)}")
        if rnn_type not in RNN_GATES:
            raise ValueError(f"{op}: rnn_type must be one of {sorted(RNN_GATES)}, got {describe(rnn_type)}")
        if vocab_size < 2:
            raise ValueError(f"{op}: vocab_size must be >= 2 (blank 0 and sos/eos V-1), got {vocab_size}")
        self.vocab_size, self.eprojs = int(vocab_size), int(eprojs)
        self.dunits, self.dlayers = int(dunits), int(dlayers)
        self.rnn_type, self.context_residual, self.dtype = rnn_type, bool(context_residual), dtype
        self.sos = self.eos = self.vocab_size - 1
        self.blank = 0
        self.attention = self._check_attention(op, attention)
        self._load(op, params)

    # -- construction ------------------------------------------------------------------------------

    def _check_attention(self, op: str, attention) -> EspnetAttention:
        if isinstance(attention, compat.EspnetModule):
            attention = attention.core
        if not isinstance(attention, EspnetAttention):
            raise TypeError(f"{op}: attention must be an attnkit.espnet attention module (e.g. attnkit.espnet.AttLoc), "
                            f"got {describe(attention)}")
        if attention.dtype != self.dtype:
            raise TypeError(f"{op}: attention must have the decoder's dtype {self.dtype}, got {attention.dtype}")
        for name in ("eprojs", "dunits"):
            have = getattr(attention, name, None)
            if have is not None and have != getattr(self, name):
                raise ValueError(f"{op}: attention.{name} must equal the decoder's {name} = {getattr(self, name)}, "
                                 f"got {have}")
        if isinstance(attention, AttForwardTA) and attention.odim != self.vocab_size:
            raise ValueError(f"{op}: AttForwardTA's odim must equal vocab_size = {self.vocab_size} (its out_prev is "
                             f"the one-hot of the fed token), got {attention.odim}")
        return attention

    def _load(self, op: str, params: Mapping[str, Any]) -> None:
        if not isinstance(params, Mapping):
            raise TypeError(f"{op}: params must be a mapping of ESPnet names to arrays, got {describe(params)}")
        own = {k: v for k, v in params.items() if not str(k).startswith(("att.", "att_list."))}
        V, E, Dz, G = self.vocab_size, self.eprojs, self.dunits, RNN_GATES[self.rnn_type] * self.dunits

        def take(name: str, shape: tuple[int, ...] | None, what: str, ndim: int = 2) -> np.ndarray:
            if name not in own:
                raise ValueError(f"{op}: params must hold {name!r} ({what}), got none (keys: {sorted(own)})")
            arr = np.asarray(own.pop(name))
            if arr.dtype.kind != "f":
                raise TypeError(f"{op}: parameter {name!r} must be a float array, got {describe(arr)}")
            if (shape is not None and arr.shape != shape) or arr.ndim != ndim:
                want = shape if shape is not None else f"a {ndim}-D array"
                raise ValueError(f"{op}: parameter {name!r} must have shape {want} ({what}), got {arr.shape}")
            return np.array(arr, dtype=self.dtype)

        embed = take("embed.weight", None, "[vocab_size, embedding dim]")
        if embed.shape[0] != V:
            raise ValueError(f"{op}: parameter 'embed.weight' must have shape ({V}, De) ([vocab_size, embedding "
                             f"dim]), got {embed.shape}")
        De = embed.shape[1]
        self.embed_dim = De
        cells = []
        for layer in range(self.dlayers):
            p = f"decoder.{layer}."
            w_ih = take(p + "weight_ih", (G, De + E if layer == 0 else Dz),
                        "[G*dunits, embed+eprojs]" if layer == 0 else "[G*dunits, dunits]")
            cells.append({"w_ih": w_ih, "w_hh": take(p + "weight_hh", (G, Dz), "[G*dunits, dunits]"),
                          "b_ih": take(p + "bias_ih", (G,), "[G*dunits]", 1),
                          "b_hh": take(p + "bias_hh", (G,), "[G*dunits]", 1)})
        out_in = Dz + E if self.context_residual else Dz
        w_out = take("output.weight", (V, out_in),
                     "[vocab_size, dunits+eprojs] (context_residual)" if self.context_residual
                     else "[vocab_size, dunits]")
        self._b_out = take("output.bias", (V,), "[vocab_size]", 1)
        if own:
            raise ValueError(f"{op}: params must hold only the decoder's parameters, "
                             f"got unexpected key(s) {sorted(own)}")
        self._embed = embed
        first = cells[0]
        # Cell 0's input product split by columns [embedding | context]: the embedding half (with
        # bias_ih) tabulated per token [V, G*Dz]; the context half [G*Dz, E] kept apart.
        self._token_gates = embed @ first["w_ih"][:, :De].T + first["b_ih"]
        # LSTM: with W_hh beside it, [W_ctx | W_hh] [G*Dz, E+Dz], one product per step (see
        # _cell0_gates); GRU keeps the recurrent product apart.
        w_ctx = first["w_ih"][:, De:]
        self._w_cell0 = PackedWeight(np.concatenate([w_ctx, first["w_hh"]], axis=1)
                                     if self.rnn_type == "lstm" else w_ctx)
        # The step's products run on weights packed once for attnkit's linear kernel.
        self._cells = [{**c, "w_ih": PackedWeight(c["w_ih"]), "w_hh": PackedWeight(c["w_hh"])} for c in cells]
        self._w_out = PackedWeight(w_out)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], *, prefix: str = "decoder.",
                        att_conf: Mapping[str, Any] | None = None, dtype=np.float32) -> "RNNDecoder":
        """Builds the decoder and its attention from an ESPnet checkpoint's state_dict.

        Keys under ``prefix`` are read (``"decoder."`` for an espnet2 ASR model, ``"dec."`` for an
        espnet1 E2E model, ``""`` for a bare decoder). Sizes, the RNN type and context_residual are
        read off the weights; the attention is built from ``att_conf`` (espnet2's decoder_conf
        ``att_conf``: atype, adim, aheads, awin, aconv_chans, aconv_filts; missing keys take espnet2's
        ``build_attention_list`` defaults) with ``attnkit.espnet.initial_att`` and loads the keys
        under ``att_list.0.`` (espnet2) or ``att.0.`` (espnet1).
        """
        op = "RNNDecoder.from_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{op}: state_dict must be a mapping of names to arrays, got {describe(state_dict)}")
        if not isinstance(prefix, str):
            raise TypeError(f"{op}: prefix must be a str, got {describe(prefix)}")
        local = {k[len(prefix):]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith(prefix)}
        for need in ("embed.weight", "decoder.0.weight_hh", "decoder.0.weight_ih", "output.weight"):
            if need not in local:
                raise ValueError(f"{op}: state_dict must hold {prefix + need!r}, "
                                 f"got none (is prefix {prefix!r} right?)")
        conf = dict(ATT_CONF_DEFAULTS)
        if att_conf is not None:
            if not isinstance(att_conf, Mapping):
                raise TypeError(f"{op}: att_conf must be a mapping (espnet2's att_conf), got {describe(att_conf)}")
            unknown = sorted(set(att_conf) - set(ATT_CONF_DEFAULTS) - set(_HAN_KEYS))
            if unknown:
                raise ValueError(f"{op}: att_conf must hold only build_attention_list keys "
                                 f"{sorted(ATT_CONF_DEFAULTS) + list(_HAN_KEYS)}, got unknown key(s) {unknown}")
            conf.update(att_conf)
        if conf["num_att"] != 1 or conf["num_encs"] != 1 or conf["han_mode"]:
            raise UnsupportedError(f"{op}: att_conf must describe one attention over one encoder (num_att = "
                                   f"num_encs = 1, han_mode False), got num_att {conf['num_att']}, num_encs "
                                   f"{conf['num_encs']}, han_mode {conf['han_mode']}")
        embed_dim = np.shape(local["embed.weight"])[1]
        vocab_size = np.shape(local["embed.weight"])[0]
        gates, dunits = np.shape(local["decoder.0.weight_hh"])
        eprojs = np.shape(local["decoder.0.weight_ih"])[1] - embed_dim
        rnn_type = {4: "lstm", 3: "gru"}.get(gates // dunits if gates % dunits == 0 else 0)
        if rnn_type is None:
            raise ValueError(f"{op}: {prefix}decoder.0.weight_hh must have shape (4*dunits, dunits) (LSTM) or "
                             f"(3*dunits, dunits) (GRU), got {np.shape(local['decoder.0.weight_hh'])}")
        dlayers = 0
        while f"decoder.{dlayers}.weight_ih" in local:
            dlayers += 1
        context_residual = np.shape(local["output.weight"])[1] != dunits
        att = initial_att(conf["atype"], eprojs, dunits, conf["aheads"], conf["adim"], conf["awin"],
                          conf["aconv_chans"], conf["aconv_filts"], dtype=dtype).core
        att_prefix = next((p for p in ("att_list.0.", "att.0.") if any(k.startswith(p) for k in local)), "att_list.0.")
        att.load_state_dict(local, prefix=att_prefix)
        return cls(local, vocab_size=int(vocab_size), eprojs=int(eprojs), dunits=int(dunits), dlayers=dlayers,
                   rnn_type=rnn_type, context_residual=bool(context_residual), attention=att, dtype=dtype)

    def __repr__(self) -> str:
        return (f"attnkit.asr.RNNDecoder(vocab_size={self.vocab_size}, eprojs={self.eprojs}, dunits={self.dunits}, "
                f"dlayers={self.dlayers}, rnn_type={self.rnn_type!r}, context_residual={self.context_residual}, "
                f"attention={self.attention!r}, dtype={self.dtype.name})")

    # -- per utterance -----------------------------------------------------------------------------

    def prepare(self, enc, lengths, *, trans_token=None) -> DecoderPrepared:
        """The per-utterance cache: enc ``[B, T, E]`` in the decoder's dtype, lengths ``[B]`` in
        [1, T] with max == T (as ESPnet's attention requires); ``trans_token [B, T]`` only (and
        always) for GDCAttLoc."""
        op = "RNNDecoder.prepare"
        prepared = self.attention.prepare(enc, lengths)
        if isinstance(self.attention, GDCAttLoc):
            if trans_token is None:
                raise ValueError(f"{op}: trans_token must be given for GDCAttLoc ([B, T] transition "
                                 f"probabilities), got None")
            tau = host_float_array(op, "trans_token", trans_token, (2, 3))
            if tau.shape not in ((prepared.batch, prepared.frames), (prepared.batch, prepared.frames, 1)):
                raise ValueError(f"{op}: trans_token must have shape ({prepared.batch}, {prepared.frames}) ([B, T]), "
                                 f"got {tau.shape}")
            trans_token = np.array(tau.reshape(prepared.batch, prepared.frames), dtype=self.dtype)
        elif trans_token is not None:
            raise ValueError(f"{op}: trans_token is only for GDCAttLoc, got one for {type(self.attention).__name__}")
        return DecoderPrepared(prepared, trans_token)

    def on_device(self, like):
        """This decoder's step on the GPU that holds CuPy array ``like``: an
        ``attnkit.asr.device.DeviceDecoder`` with the weights copied there, made once per device
        (``greedy_search`` and ``batch_beam_search`` use it for CuPy encoder outputs)."""
        from attnkit.asr import device  # it builds on this module

        return device.on_device(self, like)

    def _rows(self, op: str, prepared, rows, n: int | None = None) -> np.ndarray:
        if not isinstance(prepared, DecoderPrepared):
            raise TypeError(f"{op}: prepared must be the DecoderPrepared returned by RNNDecoder.prepare(), "
                            f"got {describe(prepared)}")
        if rows is None:
            rows = np.arange(prepared.batch, dtype=np.int64)
        else:
            rows = row_index(op, "rows", rows, prepared.batch)
        if n is not None and rows.shape[0] != n:
            raise ValueError(f"{op}: rows must have one entry per row ({n}), got {rows.shape[0]}")
        return rows

    def init_state(self, prepared: DecoderPrepared, rows=None) -> DecoderState:
        """Zero RNN states and the attention's initial state (ESPnet's ``a = None``) for
        ``rows [N]`` (default: one row per utterance)."""
        rows = self._rows("RNNDecoder.init_state", prepared, rows)
        n = rows.shape[0]
        zeros = tuple(np.zeros((n, self.dunits), self.dtype) for _ in range(self.dlayers))
        c = tuple(z.copy() for z in zeros) if self.rnn_type == "lstm" else None
        return DecoderState(zeros, c, self.attention.initial_state(prepared.attention, rows))

    def select(self, state: DecoderState, index) -> DecoderState:
        """The state of rows ``index [M]`` (reordered, repeated): beam search's reorder."""
        op = "RNNDecoder.select"
        if not isinstance(state, DecoderState):
            raise TypeError(f"{op}: state must be a DecoderState, got {describe(state)}")
        return select_rows(state, row_index(op, "index", index, state.h[0].shape[0]))

    # -- steps -------------------------------------------------------------------------------------

    def _check_state(self, op: str, state, n: int) -> DecoderState:
        if not isinstance(state, DecoderState):
            raise TypeError(f"{op}: state must be a DecoderState (from init_state or step), got {describe(state)}")
        if len(state.h) != self.dlayers or state.h[0].shape != (n, self.dunits):
            raise ValueError(f"{op}: state must hold {self.dlayers} layer(s) of [N={n}, dunits={self.dunits}], "
                             f"got {len(state.h)} of shape {state.h[0].shape}")
        return state

    def _tokens(self, op: str, tokens, n: int | None) -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.dtype.kind not in "iu" or arr.ndim != 1 or (n is not None and arr.shape[0] != n):
            want = "[N]" if n is None else f"[N={n}]"
            raise TypeError(f"{op}: tokens must be a 1-D integer array {want}, got {describe(tokens)}")
        lo, hi = int_range(arr) if arr.size else (0, 0)
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"{op}: tokens must lie in [0, vocab_size={self.vocab_size}), got min {lo} and max {hi}")
        return arr.astype(np.int64, copy=False)

    def _attend(self, prepared: DecoderPrepared, tokens: np.ndarray, state: DecoderState, rows: np.ndarray):
        """Step 1: the attention, queried with the bottom layer's previous state, default scaling."""
        att = self.attention
        if isinstance(att, NoAtt):
            return att.step(prepared.attention, None, state.attention, rows=rows)
        extra = {}
        if isinstance(att, AttForwardTA):
            extra["out_prev"] = np.eye(self.vocab_size, dtype=self.dtype)[tokens]
        elif isinstance(att, GDCAttLoc):
            extra["trans_token"] = prepared.trans_token[rows]
        return att.step(prepared.attention, state.h[0], state.attention, rows=rows, **extra)

    def _cell0_gates(self, tokens: np.ndarray, context: np.ndarray, state: DecoderState) -> np.ndarray:
        """Cell 0's gate pre-activations from [E[y]; ctx] ``[N, G*Dz]``. LSTM: with the recurrent
        product and bias_hh too, as one product [ctx; h0] [W_ctx | W_hh]^T (GRU's reset gate
        needs the recurrent part apart, so it gets the input part only)."""
        if self.rnn_type == "lstm":
            return self._token_gates[tokens] + linear(np.concatenate([context, state.h[0]], axis=1), self._w_cell0,
                                                      self._cells[0]["b_hh"])
        return self._token_gates[tokens] + linear(context, self._w_cell0)

    def _advance(self, gates0: np.ndarray, state: DecoderState):
        """Steps 2-3: the stacked cells, given ``_cell0_gates``; returns (h, c)."""
        h, c = [], []
        x = None
        for layer, p in enumerate(self._cells):
            gx = gates0 if layer == 0 else None
            if self.rnn_type == "lstm":
                if layer == 0:
                    hl, cl = lstm_from_gates(gates0, state.c[0])
                else:
                    hl, cl = lstm_cell(x, state.h[layer], state.c[layer], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
                c.append(cl)
            else:
                hl = gru_cell(x, state.h[layer], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], gates_x=gx)
            h.append(hl)
            x = hl
        return tuple(h), (tuple(c) if self.rnn_type == "lstm" else None)

    def _output_input(self, top: np.ndarray, context: np.ndarray) -> np.ndarray:
        return np.concatenate([top, context], axis=-1) if self.context_residual else top

    def step(self, prepared: DecoderPrepared, tokens, state: DecoderState, rows=None):
        """One decoder step for N rows.

        tokens ``[N]`` the previous tokens (sos first); state from ``init_state``/``step``/``select``;
        rows ``[N]`` the utterance of each row (default arange(B)). Returns ``(logp [N, V],
        new_state, attention_output)``, the last being the attention's ``AttentionOutput``
        (context ``[N, E]``, weights ``[N, T]`` or ``[N, H, T]``, state, peak ``[N]``).
        """
        op = "RNNDecoder.step"
        tokens = self._tokens(op, tokens, None)
        rows = self._rows(op, prepared, rows, tokens.shape[0])
        state = self._check_state(op, state, tokens.shape[0])
        out = self._attend(prepared, tokens, state, rows)
        h, c = self._advance(self._cell0_gates(tokens, out.context, state), state)
        logits = linear(self._output_input(h[-1], out.context), self._w_out, self._b_out)
        return log_softmax(logits), DecoderState(h, c, out.state), out

    def forward(self, prepared: DecoderPrepared, ys_in, *, return_weights: bool = False):
        """Teacher-forced run over ``ys_in [B, L]`` (sos then the reference tokens; padding may
        hold any valid token): log-probs ``[B, L, V]``, plus the attention weights ``[B, L, T]``
        (``[B, L, H, T]`` multi-head) with ``return_weights``. ESPnet's ``forward`` without dropout
        and scheduled sampling; the output layer runs once over all B*L positions."""
        op = "RNNDecoder.forward"
        ys = np.asarray(ys_in)
        if ys.dtype.kind not in "iu" or ys.ndim != 2 or ys.shape[1] == 0:
            raise TypeError(f"{op}: ys_in must be a 2-D integer array [B, L] with L >= 1, got {describe(ys_in)}")
        rows = self._rows(op, prepared, None)
        if ys.shape[0] != rows.shape[0]:
            raise ValueError(f"{op}: ys_in must have B = {rows.shape[0]} rows (one per prepared utterance), "
                             f"got shape {ys.shape}")
        self._tokens(op, ys.reshape(-1), None)
        B, L = ys.shape
        state = self.init_state(prepared)
        tops = np.empty((B, L, self._w_out.shape[1]), self.dtype)
        weights = []
        for i in range(L):
            out = self._attend(prepared, ys[:, i], state, rows)
            h, c = self._advance(self._cell0_gates(ys[:, i], out.context, state), state)
            state = DecoderState(h, c, out.state)
            tops[:, i] = self._output_input(h[-1], out.context)
            if return_weights:
                weights.append(out.weights)
        logp = log_softmax(linear(tops.reshape(B * L, -1), self._w_out, self._b_out)).reshape(B, L, -1)
        return (logp, np.stack(weights, axis=1)) if return_weights else logp
