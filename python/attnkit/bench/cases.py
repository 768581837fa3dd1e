"""Benchmark workloads: one `Case` per op x shape x dtype, with analytic FLOP and byte counts.

Counting conventions (so GFLOP/s means the same thing for every backend):

- FLOPs count only *useful* work: the multiply-adds of ``S = Q K^T`` (2*D per visible query-key
  pair) and of ``O = P V`` (2*Dv per pair), summed over the pairs that the key lengths and the
  causal mask leave visible. Non-causal without lengths this is ``4*B*H*Tq*Tk*D`` (D = Dv);
  causal is about half. A kernel that pays for padded or masked keys shows a lower GFLOP/s.
  Softmax arithmetic is not counted. Multi-head attention adds ``2*rows*in*out`` per projection.
- Bytes are the compulsory traffic: every input read once and the output written once (weights
  included for multi-head attention). GB/s is meaningful for the memory-bound decoder steps.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

OPS = ("sdpa", "mha")


@dataclass(frozen=True)
class Case:
    """One workload. For ``op="sdpa"`` q is [B, H, Tq, D], k [B, H, Tk, D], v [B, H, Tk, Dv].
    For ``op="mha"`` the model size is E = H*D: query [B, Tq, E], key = value [B, Tk, E] (the same
    array; for ``self_attention`` query is that array too, Tq = Tk)."""

    op: str
    name: str  # short workload family: "enc", "dec-step", "beam", "tiny", "mha-self", ...
    B: int
    H: int
    Tq: int
    Tk: int
    D: int
    Dv: int | None = None
    lengths: bool = False  # unsorted key lengths between Tk/2 and Tk (padded batch)
    causal: bool = False
    self_attention: bool = False  # mha only
    rotate: bool = True  # cycle several input copies so timings are not pure cache figures
    dtype: str = "float32"

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"Case: op must be one of {OPS}, got {self.op!r}")
        if self.self_attention and self.Tq != self.Tk:
            raise ValueError(f"Case: self-attention needs Tq == Tk, got {self.Tq} and {self.Tk}")

    @property
    def dv(self) -> int:
        return self.D if self.Dv is None else self.Dv

    @property
    def E(self) -> int:
        return self.H * self.D

    @property
    def label(self) -> str:
        """A human-readable, unique-per-suite description, e.g. ``enc B=8 H=4 T=512 D=64 lens``."""
        if self.op == "mha":
            t = f"T={self.Tq}" if self.self_attention else f"Tq={self.Tq} Tk={self.Tk}"
            s = f"{self.name} B={self.B} {t} E={self.E} H={self.H}"
        else:
            t = f"T={self.Tq}" if self.Tq == self.Tk else f"Tq={self.Tq} Tk={self.Tk}"
            s = f"{self.name} B={self.B} H={self.H} {t} D={self.D}"
            if self.Dv is not None and self.Dv != self.D:
                s += f" Dv={self.Dv}"
        return s + (" lens" if self.lengths else "") + (" causal" if self.causal else "")

    @property
    def key(self) -> tuple:
        """Identity used to match records across runs (`attnkit bench compare`)."""
        return (self.op, self.label, self.dtype)

    def shape(self) -> dict:
        d = {"B": self.B, "H": self.H, "Tq": self.Tq, "Tk": self.Tk, "D": self.D, "Dv": self.dv}
        if self.op == "mha":
            d["E"] = self.E
        return d

    def with_dtype(self, dtype: str) -> "Case":
        return dataclasses.replace(self, dtype=dtype)

    # ---- counts -------------------------------------------------------------------------------

    def key_lengths(self) -> np.ndarray | None:
        """Deterministic lengths evenly spread over [Tk/2, Tk], in a fixed shuffled order: [B] int64."""
        if not self.lengths:
            return None
        lens = np.round(np.linspace(self.Tk, max(1, self.Tk // 2), self.B)).astype(np.int64)
        return lens[np.random.default_rng(0).permutation(self.B)]

    def visible_pairs(self) -> int:
        """Number of (query, key) pairs that attend, summed over the batch (per head)."""
        lens = self.key_lengths()
        lens = np.full(self.B, self.Tk, np.int64) if lens is None else lens
        if not self.causal:
            return int(self.Tq * lens.sum())
        # causal, last query aligned with the last key: query i sees keys j <= i + Tk - Tq
        limit = np.clip(np.arange(self.Tq) + self.Tk - self.Tq + 1, 0, self.Tk)
        return int(np.minimum(limit[None, :], lens[:, None]).sum())

    def flops(self) -> int:
        attn = 2 * self.H * self.visible_pairs() * (self.D + self.dv)
        if self.op == "sdpa":
            return attn
        E = self.E
        proj = 2 * E * E * (self.B * self.Tq * 2 + self.B * self.Tk * 2)  # q and out; k and v
        return attn + proj

    def nbytes(self) -> int:
        item = np.dtype(self.dtype).itemsize
        B, H, Tq, Tk = self.B, self.H, self.Tq, self.Tk
        if self.op == "sdpa":
            return item * B * H * (Tq * self.D + Tk * self.D + Tk * self.dv + Tq * self.dv)
        E = self.E
        acts = B * Tq * E if self.self_attention else B * Tq * E + B * Tk * E
        return item * (acts + 4 * E * E + 4 * E + B * Tq * E)

    def input_bytes(self) -> int:
        """Bytes of one copy of the inputs that vary per call (used to size the rotation)."""
        item = np.dtype(self.dtype).itemsize
        if self.op == "sdpa":
            return item * self.B * self.H * (self.Tq * self.D + self.Tk * (self.D + self.dv))
        return item * self.B * self.E * (self.Tq + (0 if self.self_attention else self.Tk))

    def scores_bytes(self) -> int:
        """Size of the [B, H, Tq, Tk] score tensor a naive implementation materialises."""
        return np.dtype(self.dtype).itemsize * self.B * self.H * self.Tq * self.Tk

    # ---- inputs -------------------------------------------------------------------------------

    def make_inputs(self, rng: np.random.Generator) -> dict:
        """One copy of the inputs as NumPy arrays; backends convert (without copying) as they need.

        sdpa: {"q", "k", "v", "key_lengths"}; mha: {"query", "key", "value", "key_lengths"}."""
        dt = np.dtype(self.dtype)
        randn = lambda *s: rng.standard_normal(s, dtype=dt)
        lens = self.key_lengths()
        if self.op == "sdpa":
            B, H = self.B, self.H
            return {"q": randn(B, H, self.Tq, self.D), "k": randn(B, H, self.Tk, self.D),
                    "v": randn(B, H, self.Tk, self.dv), "key_lengths": lens}
        memory = randn(self.B, self.Tk, self.E)
        query = memory if self.self_attention else randn(self.B, self.Tq, self.E)
        return {"query": query, "key": memory, "value": memory, "key_lengths": lens}

    def make_params(self, rng: np.random.Generator) -> dict:
        """mha weights in torch.nn.MultiheadAttention's layout (shared by all input copies)."""
        E, dt = self.E, np.dtype(self.dtype)
        s = 1.0 / np.sqrt(E)
        u = lambda *shape: rng.uniform(-s, s, shape).astype(dt)
        return {"in_proj_weight": u(3 * E, E), "in_proj_bias": u(3 * E),
                "out_proj.weight": u(E, E), "out_proj.bias": u(E)}


def sdpa_case(name, B, H, Tq, Tk, D, **kw) -> Case:
    return Case("sdpa", name, B, H, Tq, Tk, D, **kw)


def mha_case(name, B, Tq, Tk, E, H, **kw) -> Case:
    if E % H:
        raise ValueError(f"mha_case: E must be divisible by H, got E={E}, H={H}")
    return Case("mha", name, B, H, Tq, Tk, E // H, **kw)


# The tiny case measures per-call overhead: inputs stay hot on purpose (no rotation).
TINY = sdpa_case("tiny", 1, 1, 8, 8, 8, rotate=False)


def quick_cases() -> list[Case]:
    """`attnkit bench --quick`: one of each workload family, small enough for < 1 minute."""
    return [
        sdpa_case("enc", 8, 4, 512, 512, 64),
        sdpa_case("enc", 4, 4, 256, 256, 64),
        sdpa_case("enc", 4, 4, 256, 256, 64, lengths=True),
        sdpa_case("enc", 4, 4, 256, 256, 64, causal=True),
        sdpa_case("dec-step", 10, 4, 1, 500, 64),
        sdpa_case("beam", 4, 4, 10, 500, 64),
        TINY,
        mha_case("mha-self", 4, 256, 256, 256, 4, self_attention=True),
        mha_case("mha-cross", 10, 1, 500, 256, 4),
    ]


def full_cases() -> list[Case]:
    """The full sweep: encoder self-attention up to T=8192 with D 64 and 128, padded and causal
    variants, decoder steps and beams over one encoder memory, per-call overhead, and multi-head
    attention at ESPnet Transformer recipe size (d_model 256, 4 heads)."""
    return [
        # encoder self-attention
        sdpa_case("enc", 8, 4, 512, 512, 64),
        sdpa_case("enc", 8, 4, 512, 512, 64, lengths=True),
        sdpa_case("enc", 8, 4, 512, 512, 64, causal=True),
        sdpa_case("enc", 4, 8, 1024, 1024, 64),
        sdpa_case("enc", 4, 8, 1024, 1024, 64, lengths=True),
        sdpa_case("enc", 4, 4, 1024, 1024, 128),
        sdpa_case("enc", 2, 4, 2048, 2048, 64),
        sdpa_case("enc", 1, 4, 4096, 4096, 64),
        sdpa_case("enc", 1, 4, 8192, 8192, 64),
        # decoder: one step per utterance, and a beam of 10 hypotheses as 10 query rows
        sdpa_case("dec-step", 10, 4, 1, 500, 64),
        sdpa_case("dec-step", 10, 4, 1, 2000, 64),
        sdpa_case("dec-step", 10, 4, 1, 500, 64, lengths=True),
        sdpa_case("beam", 4, 4, 10, 500, 64),
        sdpa_case("beam", 4, 4, 10, 2000, 64, lengths=True),
        TINY,
        # multi-head attention with projections, d_model 256, 4 heads
        mha_case("mha-self", 8, 512, 512, 256, 4, self_attention=True),
        mha_case("mha-self", 8, 512, 512, 256, 4, self_attention=True, lengths=True),
        mha_case("mha-cross", 10, 1, 500, 256, 4),
        mha_case("mha-cross", 4, 10, 500, 256, 4),
    ]
