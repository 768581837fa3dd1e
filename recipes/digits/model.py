"""The digit recogniser in plain PyTorch, with ESPnet2 `ESPnetASRModel` state_dict names.

normalize (GlobalMVN) -> encoder (Conv2dSubsampling without positional encoding, 2-layer BLSTM,
tanh(l_last)) -> decoder (ESPnet2 RNNDecoder: LSTMCell + AttLoc, context-residual output) and
ctc (ctc_lo). No espnet import: the names and the math follow ESPnet's source, and
tests/test_digits_recipe_espnet.py checks both against ESPnet's own modules.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# The exported config's encoder_conf / decoder_conf / model_conf.
ENCODER_CONF = {
    "rnn_type": "lstm", "bidirectional": True, "use_projection": False, "num_layers": 2,
    "hidden_size": 128, "output_size": 128, "dropout": 0.0, "subsample": None,
    "input_layer": "conv2d", "input_layer_channels": 32, "input_layer_units": 128,
}
DECODER_CONF = {
    "rnn_type": "lstm", "num_layers": 1, "hidden_size": 256, "sampling_probability": 0.0, "dropout": 0.0,
    "context_residual": True,
    "att_conf": {"atype": "location", "adim": 128, "aconv_chans": 10, "aconv_filts": 15},
}
MODEL_CONF = {"ctc_weight": 0.3, "lsm_weight": 0.1}
ATTENTION_SCALING = 2.0  # ESPnet's AttLoc default, used by its decoder


def padding_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """[B] lengths -> [B, max_length] bool, True on padded positions."""
    return torch.arange(max_length, device=lengths.device)[None, :] >= lengths[:, None]


class GlobalMVN(nn.Module):
    """y = (x - mean) / std on valid frames, 0 on padding (ESPnet2 GlobalMVN, buffers mean/std [D])."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        normalised = (feats - self.mean) / self.std
        return normalised.masked_fill(padding_mask(lengths, feats.size(1))[:, :, None], 0.0)


class Conv2dSubsampling(nn.Module):
    """ESPnet's Conv2dSubsampling with separate channel / output sizes and no positional encoding:
    [B, L, 80] -> conv 3x3/2, ReLU, conv 3x3/2, ReLU -> [B, C, L', 19] -> [B, L', C*19] -> Linear."""

    def __init__(self, input_size: int, channels: int, units: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(channels * (((input_size - 1) // 2 - 1) // 2), units))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(feats.unsqueeze(1))
        batch, channels, frames, bins = x.shape
        x = self.out(x.transpose(1, 2).reshape(batch, frames, channels * bins))  # channel-major, as ESPnet
        return x, ((lengths - 1) // 2 - 1) // 2  # ESPnet's mask[:, :, :-2:2][:, :, :-2:2]


class BlstmWithProjection(nn.Module):
    """ESPnet's `RNN` (rnn/encoders.py): packed bidirectional LSTM, then y = tanh(l_last(out))."""

    def __init__(self, input_size: int, num_layers: int, hidden_size: int, output_size: int):
        super().__init__()
        self.nbrnn = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, bidirectional=True)
        self.l_last = nn.Linear(2 * hidden_size, output_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.nbrnn(packed)[0], batch_first=True, total_length=x.size(1))
        return torch.tanh(self.l_last(out))


class RnnEncoder(nn.Module):
    """ESPnet2 RNNEncoder (use_projection false) with attnkit's conv2d input layer in front."""

    def __init__(self, input_size: int, conf: dict):
        super().__init__()
        self.embed = Conv2dSubsampling(input_size, conf["input_layer_channels"], conf["input_layer_units"])
        self.enc = nn.ModuleList([BlstmWithProjection(
            conf["input_layer_units"], conf["num_layers"], conf["hidden_size"], conf["output_size"])])

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.embed(feats, lengths)
        x = self.enc[0](x, lengths)
        return x.masked_fill(padding_mask(lengths, x.size(1))[:, :, None], 0.0), lengths


class LocationAttention(nn.Module):
    """ESPnet's AttLoc: e = gvec(tanh(mlp_att(loc_conv(a_prev)) + mlp_enc(h) + mlp_dec(z))),
    a = softmax(scaling * e) over valid frames, context = sum_t a[t] h[t]."""

    def __init__(self, enc_size: int, dec_size: int, att_dim: int, conv_chans: int, conv_filts: int):
        super().__init__()
        self.mlp_enc = nn.Linear(enc_size, att_dim)
        self.mlp_dec = nn.Linear(dec_size, att_dim, bias=False)
        self.mlp_att = nn.Linear(conv_chans, att_dim, bias=False)
        self.loc_conv = nn.Conv2d(1, conv_chans, (1, 2 * conv_filts + 1), padding=(0, conv_filts), bias=False)
        self.gvec = nn.Linear(att_dim, 1)

    def forward(self, enc: torch.Tensor, enc_projected: torch.Tensor, pad: torch.Tensor, dec_z: torch.Tensor,
                att_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """enc [B,T,E], enc_projected = mlp_enc(enc) [B,T,A], pad [B,T] bool, dec_z [B,Dz], att_prev [B,T]."""
        batch, frames = att_prev.shape
        location = self.loc_conv(att_prev.view(batch, 1, 1, frames)).squeeze(2).transpose(1, 2)  # [B,T,C]
        energy = self.gvec(torch.tanh(self.mlp_att(location) + enc_projected + self.mlp_dec(dec_z)[:, None, :]))
        weights = torch.softmax(ATTENTION_SCALING * energy.squeeze(2).masked_fill(pad, float("-inf")), dim=1)
        return torch.bmm(weights[:, None, :], enc).squeeze(1), weights


class RnnDecoder(nn.Module):
    """ESPnet2 RNNDecoder, one LSTM layer: the attention's query is the previous z, the cell input
    is [embed(y_prev); context], the output layer reads [z; context] (context_residual)."""

    def __init__(self, vocab_size: int, enc_size: int, conf: dict):
        super().__init__()
        hidden, att = conf["hidden_size"], conf["att_conf"]
        self.embed = nn.Embedding(vocab_size, hidden)
        self.decoder = nn.ModuleList([nn.LSTMCell(hidden + enc_size, hidden)])
        self.output = nn.Linear(hidden + enc_size, vocab_size)
        self.att_list = nn.ModuleList([LocationAttention(enc_size, hidden, att["adim"], att["aconv_chans"], att["aconv_filts"])])
        self.sos_eos = vocab_size - 1

    def initial_state(self, enc: torch.Tensor, enc_lengths: torch.Tensor):
        """Zero z, c [B, Dz]; uniform attention 1/len over valid frames [B, T]."""
        batch, frames = enc.shape[:2]
        z = enc.new_zeros(batch, self.decoder[0].hidden_size)
        pad = padding_mask(enc_lengths, frames)
        att = (~pad).to(enc.dtype) / enc_lengths[:, None].to(enc.dtype)
        return (z, z.clone(), att), pad

    def step(self, enc, enc_projected, pad, tokens, state):
        """tokens [B] (previous output) -> logits [B, V], new state."""
        z, c, att = state
        context, att = self.att_list[0](enc, enc_projected, pad, z, att)
        z, c = self.decoder[0](torch.cat([self.embed(tokens), context], dim=1), (z, c))
        return self.output(torch.cat([z, context], dim=1)), (z, c, att)

    def forward(self, enc: torch.Tensor, enc_lengths: torch.Tensor, ys_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ys_in [B, U] (sos + tokens, eos-padded) -> logits [B, U, V]."""
        state, pad = self.initial_state(enc, enc_lengths)
        enc_projected = self.att_list[0].mlp_enc(enc)
        logits = []
        for u in range(ys_in.size(1)):
            step_logits, state = self.step(enc, enc_projected, pad, ys_in[:, u], state)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def greedy(self, enc: torch.Tensor, enc_lengths: torch.Tensor, max_length: int) -> list[list[int]]:
        """Batched argmax decoding until eos (or max_length tokens): one token list per utterance."""
        state, pad = self.initial_state(enc, enc_lengths)
        enc_projected = self.att_list[0].mlp_enc(enc)
        tokens = torch.full((enc.size(0),), self.sos_eos, dtype=torch.long)
        finished = torch.zeros(enc.size(0), dtype=torch.bool)
        hypotheses = [[] for _ in range(enc.size(0))]
        for _ in range(max_length):
            logits, state = self.step(enc, enc_projected, pad, tokens, state)
            tokens = logits.argmax(dim=1)
            finished |= tokens == self.sos_eos
            for n in torch.nonzero(~finished).flatten().tolist():
                hypotheses[n].append(tokens[n].item())
            if finished.all():
                break
        return hypotheses


class Ctc(nn.Module):
    def __init__(self, vocab_size: int, enc_size: int):
        super().__init__()
        self.ctc_lo = nn.Linear(enc_size, vocab_size)

    def log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.ctc_lo(enc), dim=-1)


class DigitRecogniser(nn.Module):
    def __init__(self, vocab_size: int, input_size: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.normalize = GlobalMVN(mean, std)
        self.encoder = RnnEncoder(input_size, ENCODER_CONF)
        self.decoder = RnnDecoder(vocab_size, ENCODER_CONF["output_size"], DECODER_CONF)
        self.ctc = Ctc(vocab_size, ENCODER_CONF["output_size"])

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor, augment=None) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, L, 80] raw fbank -> enc [B, T, 128], T = ((L - 1) // 2 - 1) // 2."""
        x = self.normalize(feats, lengths)
        if augment is not None:
            x = augment(x)
        return self.encoder(x, lengths)


def label_smoothing_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """ESPnet's LabelSmoothingLoss (normalize_length false): KL(q || p) summed over the
    non-ignored targets (target -1 = padding) / batch; q = 1 - smoothing on the target,
    smoothing / (V - 1) on every other token.  logits [B, U, V], targets [B, U]."""
    vocab = logits.size(-1)
    valid = targets >= 0
    log_p = F.log_softmax(logits[valid], dim=-1)
    q = torch.full_like(log_p, smoothing / (vocab - 1))
    q.scatter_(1, targets[valid][:, None], 1.0 - smoothing)
    return F.kl_div(log_p, q, reduction="sum") / logits.size(0)


def ctc_loss(log_probs: torch.Tensor, enc_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor) -> torch.Tensor:
    """ESPnet's CTC loss: summed over the batch / batch (blank 0, zero_infinity)."""
    loss = F.ctc_loss(log_probs.transpose(0, 1), targets, enc_lengths, target_lengths,
                      blank=0, reduction="sum", zero_infinity=True)
    return loss / log_probs.size(0)
