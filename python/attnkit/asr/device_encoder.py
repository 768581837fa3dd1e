"""The front of an ``AsrModel`` on the GPU: global mean-variance normalisation, the conv2d / VGG2L
subsampling and the (B)LSTM / GRU encoder layers with their projections, and the CTC
log-posteriors, on CuPy arrays with the CPU modules' formulas (attnkit.asr.normalize, .subsampling,
.encoder, .rnn).

``AsrModel.encode`` and ``AsrModel.ctc_log_probs`` come here for CuPy inputs; ``model.on_device(like)``
copies the weights to that GPU once. Lengths stay host arrays (as everywhere in attnkit), so the
masks, the row order of the packed RNNs and the rows running at each frame are known on the host
and nothing is read back. Convolutions are one im2col copy (the K x K strided views stacked) and
one product; the recurrent layers walk the frames with a product and the cell's elementwise ops
per frame (~8 CuPy launches: a fused cell kernel is the next step for long utterances).

Not yet run on a GPU (none has been lent to this project so far): tests/test_cuda_glue_decoder.py
runs it on a NumPy stand-in for CuPy against the CPU encoder.
"""
from __future__ import annotations

import math

import numpy as np

from attnkit._arrays import describe, is_device_array, lengths_array
from attnkit._cuda import GpuCall
from attnkit.asr.encoder import RNN
from attnkit.asr.rnn import gru_from_gates, lstm_from_gates, lstm_gate_scale
from attnkit.asr.subsampling import Conv2dSubsampling, VGG2L, ceil_half, positional_encoding


class DeviceEncoder:
    """An ``AsrModel``'s normalisation, encoder and CTC output layer on one GPU (see the module
    docstring); made by ``AsrModel.on_device(like)``."""

    def __init__(self, model, call: GpuCall, xp):
        self.model, self.xp, self.dtype = model, xp, model.dtype
        self._lib, self.device = call.lib, call.device
        up = lambda a: xp.asarray(np.ascontiguousarray(a))  # noqa: E731
        with call:
            norm = model.normalize
            self._mvn = None if norm is None else (up(norm.params["mean"]), up(norm.params["std"]))
            enc = model.encoder
            front = enc.front
            self._convs = {}  # name -> (W [Cin*K*K, Cout]: the im2col columns (c, i, j) times W^T, bias, K)
            if front is not None:
                for name, w in front.params.items():
                    if name.endswith(".weight") and w.ndim == 4:
                        layer = name[:-len(".weight")]
                        self._convs[layer] = (up(w.reshape(w.shape[0], -1).T), up(front.params[layer + ".bias"]),
                                              w.shape[-1])
                if isinstance(front, Conv2dSubsampling):
                    self._out = (up(front.params["out.0.weight"].T), up(front.params["out.0.bias"]))
            rnn = enc.rnn
            self._rnns = [self._upload_rnn(up, r) for r in ([rnn.rnn] if isinstance(rnn, RNN) else rnn.layers)]
            if isinstance(rnn, RNN):
                self._proj = [(up(rnn.params["l_last.weight"].T), up(rnn.params["l_last.bias"]))]
            else:
                self._proj = [(up(rnn.params[f"bt{i}.weight"].T), up(rnn.params[f"bt{i}.bias"]))
                              for i in range(len(rnn.layers))]
            self._ctc = None
            if model.has_ctc:
                self._ctc = (up(model.weights["ctc.ctc_lo.weight"].T), up(model.weights["ctc.ctc_lo.bias"]))

    def _upload_rnn(self, up, rnn) -> dict:
        """A PackedRNN's weights on the device: per layer the input product of both directions
        ``[I, D*G*H]`` with its bias, and per direction the recurrent ``[H, G*H]`` and bias."""
        layers = []
        for k in range(rnn.num_layers):
            directions = [(up(rnn.params[f"weight_hh_l{k}{s}"].T), up(rnn.params[f"bias_hh_l{k}{s}"]))
                          for s in rnn._suffixes]
            layers.append((up(rnn._w_ih[k].unpacked().T), up(rnn._b_ih[k]), directions))
        scale = up(lstm_gate_scale(rnn.hidden_size, rnn.dtype)) if rnn.rnn_type == "lstm" else None
        return {"layers": layers, "lstm": rnn.rnn_type == "lstm", "hidden": rnn.hidden_size, "gate_scale": scale}

    # -- helpers ------------------------------------------------------------------------------

    def _zero_past(self, x, lengths: np.ndarray):
        """x ``[B, T, ...]`` with frames t >= lengths[b] set to 0 (the mask built on the host)."""
        past = np.arange(x.shape[1])[None, :] >= lengths[:, None]
        mask = self.xp.asarray(past.reshape(past.shape + (1,) * (x.ndim - 2)))
        return self.xp.where(mask, x.dtype.type(0), x)

    def _conv(self, x, name: str, stride: int, padding: int):
        """torch's Conv2d on channels-last ``[B, T, F, Cin]`` maps, then ReLU (every conv here has one)."""
        xp = self.xp
        w_t, bias, k = self._convs[name]
        if padding:
            x = xp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        B, T, F, cin = x.shape
        t_out, f_out = (T - k) // stride + 1, (F - k) // stride + 1
        cols = xp.stack([x[:, i:i + stride * (t_out - 1) + 1:stride, j:j + stride * (f_out - 1) + 1:stride]
                         for i in range(k) for j in range(k)], axis=-1)  # [B, T', F', Cin, K*K]
        y = cols.reshape(B * t_out * f_out, cin * k * k) @ w_t + bias
        return xp.maximum(y, y.dtype.type(0)).reshape(B, t_out, f_out, -1)

    def _channel_major(self, x):
        B, T, F, C = x.shape
        return self.xp.ascontiguousarray(x.transpose(0, 1, 3, 2)).reshape(B, T, C * F)

    # -- layers -------------------------------------------------------------------------------

    def _conv2d_subsampling(self, x, lengths: np.ndarray):
        front = self.model.encoder.front
        out_lengths = Conv2dSubsampling.reduce(lengths)
        h = self._zero_past(x, lengths)[..., None]
        h = self._conv(self._conv(h, "conv.0", 2, 0), "conv.2", 2, 0)[:, :int(out_lengths.max())]
        w_t, b = self._out
        y = self._channel_major(h) @ w_t + b
        if front.positional_encoding:
            pe = self.xp.asarray(positional_encoding(y.shape[1], front.units).astype(self.dtype))
            y = y * self.dtype.type(math.sqrt(front.units)) + pe
        return self._zero_past(y, out_lengths), out_lengths

    def _vgg2l(self, x, lengths: np.ndarray):
        xp = self.xp
        B, T, D = x.shape
        c = self.model.encoder.front.in_channel
        h = x.reshape(B, T, c, D // c).transpose(0, 1, 3, 2)  # [B, T, F, C]
        for block in ("conv1", "conv2"):
            for layer in ("_1", "_2"):
                h = self._conv(self._zero_past(h, lengths), block + layer, 1, 1)
            h = self._zero_past(h, lengths)
            _, T, F, C = h.shape  # 2x2 max-pool, ceil mode (ReLU outputs: zero padding is neutral)
            h = xp.pad(h, ((0, 0), (0, T % 2), (0, F % 2), (0, 0)))
            h = h.reshape(B, (T + 1) // 2, 2, (F + 1) // 2, 2, C).max(axis=(2, 4))
            lengths = ceil_half(lengths)
        return self._zero_past(self._channel_major(h), lengths), lengths

    def _packed_rnn(self, rnn: dict, x, lengths: np.ndarray):
        """``PackedRNN`` on the device: rows sorted longest first, so the rows running at frame t
        are the first active[t] (host integers); returns ``[B, max(lengths), D*H]``."""
        xp = self.xp
        B = x.shape[0]
        T = int(lengths.max())
        order = np.argsort(-lengths, kind="stable")
        active = (lengths[order][None, :] > np.arange(T)[:, None]).sum(axis=1)
        order_dev = xp.asarray(order)
        h = xp.ascontiguousarray(x[order_dev, :T].transpose(1, 0, 2))  # [T, B, I]
        for w_ih_t, b_ih, directions in rnn["layers"]:
            gx = (h.reshape(T * B, -1) @ w_ih_t + b_ih).reshape(T, B, -1)  # [T, B, D*G*H]
            g = gx.shape[2] // len(directions)
            outs = [self._direction(rnn, gx[:, :, d * g:(d + 1) * g], active, w_hh_t, b_hh, reverse=d == 1)
                    for d, (w_hh_t, b_hh) in enumerate(directions)]
            h = outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=2)
        y = xp.empty((B, T, h.shape[2]), self.dtype)
        y[order_dev] = h.transpose(1, 0, 2)
        return y

    def _direction(self, rnn: dict, gx, active: np.ndarray, w_hh_t, b_hh, reverse: bool):
        xp = self.xp
        T, B, H = gx.shape[0], gx.shape[1], rnn["hidden"]
        out = xp.zeros((T, B, H), self.dtype)
        h = xp.zeros((B, H), self.dtype)
        c = xp.zeros((B, H), self.dtype) if rnn["lstm"] else None
        # Backward: a row becomes active at its own last frame, still holding its zero state.
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            n = int(active[t])
            if n == 0:
                continue
            gh = h[:n] @ w_hh_t + b_hh
            if rnn["lstm"]:
                h_new, c[:n] = lstm_from_gates(gh + gx[t, :n], c[:n], rnn["gate_scale"])
            else:
                h_new = gru_from_gates(gx[t, :n], gh, h[:n])
            h[:n] = h_new
            out[t, :n] = h_new
        return out

    def _rnn_layers(self, x, lengths: np.ndarray):
        xp = self.xp
        enc_rnn = self.model.encoder.rnn
        if isinstance(enc_rnn, RNN):
            (w_t, b), = self._proj
            y = xp.tanh(self._packed_rnn(self._rnns[0], x, lengths) @ w_t + b)
            return self._zero_past(y, lengths), lengths
        last = len(self._rnns) - 1
        for i, (rnn, s, (w_t, b)) in enumerate(zip(self._rnns, enc_rnn.subsample, self._proj)):
            ys = self._packed_rnn(rnn, x, lengths)
            if s > 1:
                ys, lengths = ys[:, ::s], (lengths + 1) // s
            x = ys @ w_t + b
            if i < last:
                x = xp.tanh(x)
        return self._zero_past(x[:, :int(lengths.max())], lengths), lengths

    # -- the calls ----------------------------------------------------------------------------

    def encode(self, feats, lengths=None):
        """``AsrModel.encode`` on the device: feats ``[B, T, F]`` (a CuPy array), lengths on the
        host -> (enc ``[B, T', E]`` on the device, enc_lengths ``[B]`` int64 on the host)."""
        op = "AsrModel.encode"
        model = self.model
        F = model.config.input_size
        if feats.ndim != 3 or feats.shape[2] != F or feats.dtype.kind != "f":
            raise ValueError(f"{op}: feats must be a float array of shape [B, T, {F}] (input_size), "
                             f"got {describe(feats)}")
        B, T, _ = feats.shape
        lengths = np.full(B, T, np.int64) if lengths is None else lengths_array(op, "lengths", lengths, B, T, "T")
        encoder = model.encoder
        if encoder.output_lengths(lengths).min() < 1:
            raise ValueError(f"{op}: lengths must be >= {encoder.min_length()} (shorter input leaves no encoder "
                             f"frame), got {lengths.tolist()}")
        with self._context():
            return self._encode(feats, lengths)

    def _context(self):
        """This encoder's device current (CuPy allocates on the current device)."""
        stream = self._lib.current_stream(self.device)
        return self._lib.running_on(self.device, stream, stream)

    def _encode(self, feats, lengths: np.ndarray):
        model, encoder = self.model, self.model.encoder
        x = feats[:, :int(lengths.max())].astype(self.dtype)  # a copy: the caller's features stay
        if self._mvn is not None:  # GlobalMVN: subtract, zero the padding, divide, as ESPnet
            mean, std = self._mvn
            if model.normalize.norm_means:
                x = x - mean
            x = self._zero_past(x, lengths)
            if model.normalize.norm_vars:
                x = x / std
        x = self._zero_past(x, lengths)
        if isinstance(encoder.front, VGG2L):
            x, lengths = self._vgg2l(x, lengths)
        elif isinstance(encoder.front, Conv2dSubsampling):
            x, lengths = self._conv2d_subsampling(x, lengths)
        return self._rnn_layers(x, lengths)

    def ctc_log_probs(self, enc):
        """``AsrModel.ctc_log_probs`` on the device: enc ``[B, T', E]`` -> ``[B, T', V]``."""
        from attnkit.asr.decoder import log_softmax

        w_t, b = self._ctc
        with self._context():
            return log_softmax(enc.astype(self.dtype, copy=False) @ w_t + b)


def on_device(model, like) -> DeviceEncoder:
    """``model``'s DeviceEncoder for the GPU of CuPy array ``like``, made once per device."""
    from attnkit._core import UnsupportedError

    if not is_device_array(like):
        raise TypeError(f"AsrModel.on_device: like must be a GPU array, got {describe(like)}")
    call = GpuCall("AsrModel.on_device", {"like": like})
    xp = getattr(call.lib, "xp", None)
    if xp is None:
        raise UnsupportedError(f"AsrModel.on_device: like must be a CuPy array, got a {call.lib.name} array")
    cache = model.__dict__.setdefault("_on_device", {})
    key = (call.lib.name, call.device)
    if key not in cache:
        cache[key] = DeviceEncoder(model, call, xp)
    return cache[key]
