"""Benchmark workloads: one case per op x shape x dtype, with analytic FLOP and byte counts.

Ops: "sdpa" and "mha" (`Case`), "espnet-step" (`EspnetStepCase`: one decoder step of an ESPnet
RNN attention class), "ctc-prefix" (`CtcPrefixCase`: one step of the batched search's CTC prefix
scorer, no FLOP count: it is exp / log work) and "decode" (`DecodeCase`: end-to-end decoding of
audio, timed as a whole and reported as a real-time factor, no FLOP count).

Counting conventions (so GFLOP/s means the same thing for every backend):

- sdpa / mha FLOPs count only *useful* work: the multiply-adds of ``S = Q K^T`` (2*D per
  visible query-key pair) and of ``O = P V`` (2*Dv per pair), summed over the pairs that the key
  lengths and the causal mask leave visible. Non-causal without lengths this is ``4*B*H*Tq*Tk*D`` (D = Dv);
  causal is about half. A kernel that pays for padded or masked keys shows a lower GFLOP/s.
  Softmax arithmetic is not counted. Multi-head attention adds ``2*rows*in*out`` per projection.
- Bytes are the compulsory traffic: every input read once and the output written once (weights
  included for multi-head attention). GB/s is meaningful for the memory-bound decoder steps.
- espnet-step FLOPs count the multiply-adds (2 FLOPs each) of the products one step must do once
  the per-utterance cache exists (`prepare`, untimed), summed over the valid frames V of the N
  rows; elementwise work (adds, tanh, softmax) is not counted. With query projection Dz -> A,
  conv kernel K = 2F+1 over C channels, energy vector A, context E:
  AttAdd, AttDot ``2*N*Dz*A + V*(2*A + 2*E)``; AttLoc adds ``V*(2*C*K + 2*C*A)``;
  AttMultiHeadLoc (H heads, A_k = A_v = A; per head the energy vector over A_k and the context
  over the projected values A_v) ``H*(2*N*Dz*A + V*(2*C*K + 2*C*A + 2*A + 2*A)) + 2*N*H*A*E``
  (the last term: the output projection). Bytes: the cached keys and values of each utterance
  read once (not once per row), the step's weights, and per row dec_z, the previous weights
  (location classes), the new weights and the context.
- ctc-prefix bytes: per frame and scored lane (prefix x candidate) the candidate's
  log-posterior and phi read, r^n and r^b written.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from attnkit.bench import ctc_prefix, decode, espnet_step

OPS = ("sdpa", "mha", "espnet-step", "ctc-prefix", "decode")
ATTENTION_OPS = ("sdpa", "mha")


class Workload:
    """What the runner, the backends and the report need of every case (defaults for the ops
    that have no such notion). Subclasses are frozen dataclasses with `op`, `name` and `dtype`."""

    op: str
    name: str
    dtype: str
    rotate = False  # cycle several input copies (see runner.copies_for)
    lengths = False
    causal = False

    @property
    def label(self) -> str:
        raise NotImplementedError

    @property
    def key(self) -> tuple:
        """Identity used to match records across runs (`attnkit bench compare`)."""
        return (self.op, self.label, self.dtype)

    @property
    def series(self) -> str | None:
        """The label without the sequence length: the cases of one line in the throughput plot."""
        return None

    @property
    def seq_len(self) -> int | None:
        """The x-axis of the throughput plot (keys / encoder frames); None: not plotted."""
        return None

    def shape(self) -> dict:
        raise NotImplementedError

    def with_dtype(self, dtype: str) -> "Workload":
        return dataclasses.replace(self, dtype=dtype)

    def unavailable(self) -> str | None:
        """None when this case can run in this process, else why not (a missing model file)."""
        return None

    def key_lengths(self) -> np.ndarray | None:
        return None

    def flops(self) -> int | None:
        return None

    def nbytes(self) -> int | None:
        return None

    def input_bytes(self) -> int:
        return 0

    def scores_bytes(self) -> int:
        return 0

    def make_inputs(self, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def make_params(self, rng: np.random.Generator) -> dict | None:
        """Weights shared by all input copies (None: the op has none)."""
        return None

    def rates(self, seconds: float) -> dict:
        """Figures derived from the median time of one call: GFLOP/s and GB/s by default."""
        flops, nbytes = self.flops(), self.nbytes()
        return {"gflops": None if flops is None else flops / seconds / 1e9,
                "gbps": None if nbytes is None else nbytes / seconds / 1e9}


@dataclass(frozen=True)
class Case(Workload):
    """One workload. For ``op="sdpa"`` q is [B, H, Tq, D], k [B, Hkv, Tk, D], v [B, Hkv, Tk, Dv]
    (``kv_heads`` Hkv < H: grouped-query attention, torch's ``enable_gqa``; default Hkv = H).
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
    kv_heads: int | None = None  # sdpa only: k and v heads, dividing H (None: H)
    rotate: bool = True  # cycle several input copies so timings are not pure cache figures
    dtype: str = "float32"

    def __post_init__(self):
        if self.op not in ATTENTION_OPS:
            raise ValueError(f"Case: op must be one of {ATTENTION_OPS}, got {self.op!r}")
        if self.self_attention and self.Tq != self.Tk:
            raise ValueError(f"Case: self-attention needs Tq == Tk, got {self.Tq} and {self.Tk}")
        if self.kv_heads is not None and (self.op != "sdpa" or self.kv_heads < 1 or self.H % self.kv_heads):
            raise ValueError(f"Case: kv_heads must divide H={self.H} (sdpa only), got {self.kv_heads}")

    @property
    def dv(self) -> int:
        return self.D if self.Dv is None else self.Dv

    @property
    def E(self) -> int:
        return self.H * self.D

    @property
    def hk(self) -> int:
        """Heads of k and v."""
        return self.H if self.kv_heads is None else self.kv_heads

    @property
    def grouped(self) -> bool:
        return self.hk != self.H

    @property
    def label(self) -> str:
        """A human-readable, unique-per-suite description, e.g. ``enc B=8 H=4 T=512 D=64 lens``."""
        if self.op == "mha":
            t = f"T={self.Tq}" if self.self_attention else f"Tq={self.Tq} Tk={self.Tk}"
            s = f"{self.name} B={self.B} {t} E={self.E} H={self.H}"
        else:
            t = f"T={self.Tq}" if self.Tq == self.Tk else f"Tq={self.Tq} Tk={self.Tk}"
            s = f"{self.name} B={self.B} H={self.H}{f' Hkv={self.hk}' if self.grouped else ''} {t} D={self.D}"
            if self.Dv is not None and self.Dv != self.D:
                s += f" Dv={self.Dv}"
        return s + (" lens" if self.lengths else "") + (" causal" if self.causal else "")

    @property
    def series(self) -> str:
        s = f"{self.name}{f' Hkv={self.hk}' if self.grouped else ''} D={self.D}"
        s += "" if self.Dv is None or self.Dv == self.D else f" Dv={self.Dv}"
        return s + (" lens" if self.lengths else "") + (" causal" if self.causal else "")

    @property
    def seq_len(self) -> int:
        return self.Tk

    def shape(self) -> dict:
        d = {"B": self.B, "H": self.H, "Tq": self.Tq, "Tk": self.Tk, "D": self.D, "Dv": self.dv}
        if self.grouped:
            d["Hkv"] = self.hk
        if self.op == "mha":
            d["E"] = self.E
        return d

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
        # causal (PyTorch's is_causal, as attnkit's causal=True): query i sees keys j <= i
        limit = np.clip(np.arange(self.Tq) + 1, 0, self.Tk)
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
            return item * B * (H * Tq * (self.D + self.dv) + self.hk * Tk * (self.D + self.dv))
        E = self.E
        acts = B * Tq * E if self.self_attention else B * Tq * E + B * Tk * E
        return item * (acts + 4 * E * E + 4 * E + B * Tq * E)

    def input_bytes(self) -> int:
        """Bytes of one copy of the inputs that vary per call (used to size the rotation)."""
        item = np.dtype(self.dtype).itemsize
        if self.op == "sdpa":
            return item * self.B * (self.H * self.Tq * self.D + self.hk * self.Tk * (self.D + self.dv))
        return item * self.B * self.E * (self.Tq + (0 if self.self_attention else self.Tk))

    def scores_bytes(self) -> int:
        """Size of the [B, H, Tq, Tk] score tensor a naive implementation materialises."""
        return np.dtype(self.dtype).itemsize * self.B * self.H * self.Tq * self.Tk

    # ---- inputs -------------------------------------------------------------------------------

    def make_inputs(self, rng: np.random.Generator) -> dict:
        """One copy of the inputs as NumPy arrays; backends convert (without copying) as they need.

        sdpa: {"q", "k", "v", "key_lengths"}; mha: {"query", "key", "value", "key_lengths"}."""
        dt = np.dtype(self.dtype)
        # float16 (GPU runs) is drawn in float32 and rounded: NumPy draws float32 and float64 only
        randn = lambda *s: rng.standard_normal(s, dtype=np.float64 if dt == np.float64 else np.float32).astype(dt, copy=False)
        lens = self.key_lengths()
        if self.op == "sdpa":
            B, H = self.B, self.H
            return {"q": randn(B, H, self.Tq, self.D), "k": randn(B, self.hk, self.Tk, self.D),
                    "v": randn(B, self.hk, self.Tk, self.dv), "key_lengths": lens}
        memory = randn(self.B, self.Tk, self.E)
        query = memory if self.self_attention else randn(self.B, self.Tq, self.E)
        return {"query": query, "key": memory, "value": memory, "key_lengths": lens}

    def make_params(self, rng: np.random.Generator) -> dict | None:
        """mha weights in torch.nn.MultiheadAttention's layout (shared by all input copies)."""
        if self.op != "mha":
            return None
        E, dt = self.E, np.dtype(self.dtype)
        s = 1.0 / np.sqrt(E)
        u = lambda *shape: rng.uniform(-s, s, shape).astype(dt)
        return {"in_proj_weight": u(3 * E, E), "in_proj_bias": u(3 * E),
                "out_proj.weight": u(E, E), "out_proj.bias": u(E)}


ESPNET_CLASSES = ("AttLoc", "AttAdd", "AttDot", "AttMultiHeadLoc")
LENGTH_STEP = 37  # utterance u of a batch has T - 37 u frames (the first has T, as ESPnet requires)


@dataclass(frozen=True)
class EspnetStepCase(Workload):
    """One decoder step of an `attnkit.espnet` class for N = utterances x hyps rows (hypotheses
    of a beam), over T encoder frames, at ESPnet's recipe sizes by default (E = A = Dz = 320,
    C = 10 channels, F = 100, 4 heads for AttMultiHeadLoc with A_k = A_v = A).

    The per-utterance cache (`prepare`, or the peers' projected encoder) is built outside the
    timing. Inputs are not rotated: a real search reads the same cache at every step."""

    cls: str
    utterances: int
    hyps: int
    T: int
    dtype: str = "float32"
    E: int = 320
    A: int = 320
    Dz: int = 320
    C: int = 10
    F: int = 100
    heads: int = 4  # AttMultiHeadLoc only

    op = "espnet-step"

    def __post_init__(self):
        if self.cls not in ESPNET_CLASSES:
            raise ValueError(f"EspnetStepCase: cls must be one of {ESPNET_CLASSES}, got {self.cls!r}")
        if self.T - LENGTH_STEP * (self.utterances - 1) < 1:
            raise ValueError(f"EspnetStepCase: T must exceed {LENGTH_STEP} * (utterances - 1) = "
                             f"{LENGTH_STEP * (self.utterances - 1)}, got {self.T}")

    @property
    def name(self) -> str:
        return self.cls

    @property
    def N(self) -> int:
        return self.utterances * self.hyps

    @property
    def multi_head(self) -> bool:
        return self.cls == "AttMultiHeadLoc"

    @property
    def label(self) -> str:
        return f"{self.cls} N={self.N} T={self.T}"

    @property
    def series(self) -> str:
        return f"{self.cls} N={self.N}"

    @property
    def seq_len(self) -> int:
        return self.T

    def shape(self) -> dict:
        d = {"class": self.cls, "N": self.N, "utterances": self.utterances, "hypotheses": self.hyps, "T": self.T,
             "E": self.E, "A": self.A, "Dz": self.Dz}
        if self.cls in ("AttLoc", "AttMultiHeadLoc"):
            d.update(C=self.C, F=self.F)
        if self.multi_head:
            d["heads"] = self.heads
        return d

    def utterance_lengths(self) -> np.ndarray:
        return self.T - LENGTH_STEP * np.arange(self.utterances, dtype=np.int64)

    def valid_frames(self) -> int:
        """V: the valid frames summed over the N rows."""
        return int(self.hyps * self.utterance_lengths().sum())

    def flops(self) -> int:
        N, V, A, E, Dz, C, K = self.N, self.valid_frames(), self.A, self.E, self.Dz, self.C, 2 * self.F + 1
        if self.multi_head:
            per_head = 2 * N * Dz * A + V * (2 * C * K + 2 * C * A + 2 * A + 2 * A)
            return self.heads * per_head + 2 * N * self.heads * A * E
        location = V * (2 * C * K + 2 * C * A) if self.cls == "AttLoc" else 0
        return 2 * N * Dz * A + V * (2 * A + 2 * E) + location

    def nbytes(self) -> int:
        U, N, T, A, E, Dz, C, K = self.utterances, self.N, self.T, self.A, self.E, self.Dz, self.C, 2 * self.F + 1
        if self.multi_head:
            H = self.heads
            cache, weights = U * T * H * 2 * A, H * (Dz * A + A + C * K + C * A) + H * A * E
            state_in, weights_out = H * T, H * T
        else:
            loc = self.cls == "AttLoc"
            cache, weights = U * T * (A + E), Dz * A + A + (C * K + C * A if loc else 0)
            state_in, weights_out = (T if loc else 0), T
        return np.dtype(self.dtype).itemsize * (cache + weights + N * (Dz + state_in + weights_out + E))

    def make_inputs(self, rng: np.random.Generator) -> dict:
        """{"enc" [U, T, E], "lengths" [U], "rows" [N] (utterance of each row), "dec_z" [N, Dz],
        "a_prev" [N, T]}: a_prev, the previous attention weights, differs from row to row (a
        softmax of random scores over the row's valid frames), as in the middle of a search;
        at its first step every hypothesis would hold the same uniform weights."""
        dt = np.dtype(self.dtype)
        rows = np.repeat(np.arange(self.utterances, dtype=np.int64), self.hyps)
        valid = np.arange(self.T)[None, :] < self.utterance_lengths()[rows][:, None]
        scores = np.where(valid, 2 * rng.standard_normal((self.N, self.T)), -np.inf)
        a_prev = np.exp(scores - scores.max(1, keepdims=True))
        return {"enc": rng.standard_normal((self.utterances, self.T, self.E), dtype=dt),
                "lengths": self.utterance_lengths(),
                "rows": rows,
                "dec_z": rng.standard_normal((self.N, self.Dz), dtype=dt),
                "a_prev": (a_prev / a_prev.sum(1, keepdims=True)).astype(dt)}

    def make_params(self, rng: np.random.Generator) -> dict:
        """The class's weights under ESPnet's state_dict names (ESPnet's initialisation)."""
        return espnet_step.make_attention(self, seed=int(rng.integers(2**31))).state_dict()


@dataclass(frozen=True)
class CtcPrefixCase(Workload):
    """One step of the batched search's CTC prefix scorer for N = utterances x hyps prefixes of
    one label, each scoring `scored` candidate labels (ESPnet: 1.5 x beam) over T frames, with a
    vocabulary of `vocab` labels; utterance u has T - LENGTH_STEP u frames (see
    `attnkit.bench.ctc_prefix`)."""

    utterances: int
    hyps: int
    T: int
    scored: int = 15
    vocab: int = 500
    dtype: str = "float32"

    op = "ctc-prefix"
    name = "ctc"

    def __post_init__(self):
        if not 1 <= self.scored < self.vocab:
            raise ValueError(f"CtcPrefixCase: scored must lie in [1, vocab={self.vocab}), got {self.scored}")
        if self.hyps > self.scored:
            raise ValueError(f"CtcPrefixCase: hyps must be <= scored={self.scored}, got {self.hyps}")
        if self.T - LENGTH_STEP * (self.utterances - 1) < 2:
            raise ValueError(f"CtcPrefixCase: T must exceed {LENGTH_STEP} * (utterances - 1) + 1, got {self.T}")

    @property
    def N(self) -> int:
        return self.utterances * self.hyps

    @property
    def label(self) -> str:
        return f"CTC N={self.N} T={self.T} S={self.scored} V={self.vocab}"

    @property
    def series(self) -> str:
        return f"CTC N={self.N} S={self.scored}"

    @property
    def seq_len(self) -> int:
        return self.T

    def shape(self) -> dict:
        return {"N": self.N, "utterances": self.utterances, "hypotheses": self.hyps, "T": self.T,
                "scored": self.scored, "vocab": self.vocab}

    def utterance_lengths(self) -> np.ndarray:
        return self.T - LENGTH_STEP * np.arange(self.utterances, dtype=np.int64)

    def nbytes(self) -> int:
        return np.dtype(self.dtype).itemsize * self.T * self.N * self.scored * 4

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return ctc_prefix.make_inputs(self, rng)


@dataclass(frozen=True)
class DecodeCase(Workload):
    """End-to-end decoding of the bundled sample recordings with an attnkit model directory
    (default: the bundled model): the encoder and a search (`attnkit.bench.decode.SEARCHES`:
    "greedy", "beam" = ESPnet's recognize_beam one utterance at a time, "batch-beam" =
    recognize_beam_batch), `batch` utterances per encoder call. One call decodes every sample;
    features are computed once beforehand, untimed. Reported as a real-time factor (compute
    seconds / audio seconds) and utterances per second."""

    search: str
    beam: int = 1
    batch: int = 1
    model: str | None = None  # None: attnkit.asr.recognizer.BUNDLED_MODEL
    dtype: str = "float32"

    op = "decode"

    def __post_init__(self):
        if self.search not in decode.SEARCHES:
            raise ValueError(f"DecodeCase: search must be one of {decode.SEARCHES}, got {self.search!r}")
        if self.search == "greedy" and self.beam != 1:
            raise ValueError(f"DecodeCase: beam must be 1 for greedy search, got {self.beam}")
        if self.beam < 1 or self.batch < 1:
            raise ValueError(f"DecodeCase: beam and batch must be >= 1, got beam={self.beam}, batch={self.batch}")

    @property
    def name(self) -> str:
        return self.search

    @property
    def label(self) -> str:
        beam = "" if self.search == "greedy" else f" beam={self.beam}"
        return f"{self.search}{beam} batch={self.batch}"

    def shape(self) -> dict:
        return {"search": self.search, "beam": self.beam, "batch": self.batch, "model": str(decode.model_dir(self))}

    def unavailable(self) -> str | None:
        return decode.missing(self)

    def make_inputs(self, rng: np.random.Generator) -> dict:
        return decode.load_inputs(self)

    def rates(self, seconds: float) -> dict:
        utterances, audio_seconds = decode.audio_summary()
        return {"gflops": None, "gbps": None, "utterances": utterances, "audio_seconds": audio_seconds,
                "rtf": seconds / audio_seconds, "utt_per_s": utterances / seconds}


def espnet_step_case(cls, N, T, **kw) -> EspnetStepCase:
    """N rows as ESPnet's batch beam search lays them out: up to 10 hypotheses of one utterance,
    beyond that utterances of 10 hypotheses (N = 40: 4 utterances x 10)."""
    if N > 10 and N % 10:
        raise ValueError(f"espnet_step_case: N must be at most 10 or a multiple of 10, got {N}")
    utterances = 1 if N <= 10 else N // 10
    return EspnetStepCase(cls, utterances, N // utterances, T, **kw)


def sdpa_case(name, B, H, Tq, Tk, D, **kw) -> Case:
    return Case("sdpa", name, B, H, Tq, Tk, D, **kw)


def mha_case(name, B, Tq, Tk, E, H, **kw) -> Case:
    if E % H:
        raise ValueError(f"mha_case: E must be divisible by H, got E={E}, H={H}")
    return Case("mha", name, B, H, Tq, Tk, E // H, **kw)


# The tiny case measures per-call overhead: inputs stay hot on purpose (no rotation).
TINY = sdpa_case("tiny", 1, 1, 8, 8, 8, rotate=False)


def espnet_step_cases() -> list[EspnetStepCase]:
    """Each class at N = 1, 10 and 40 rows (a single hypothesis, a beam of 10, 4 utterances x 10)
    and T = 200 and 1000 encoder frames (the issue-3 set, `benchmarks/bench_espnet_step.py`), and
    AttLoc at N = 10, T = 500 (the shape of the GPU target in issue 4)."""
    return ([espnet_step_case(cls, N, T) for cls in ESPNET_CLASSES for T in (200, 1000) for N in (1, 10, 40)]
            + [espnet_step_case("AttLoc", 10, 500)])


def ctc_prefix_cases() -> list[CtcPrefixCase]:
    """A beam of 10 for one utterance at T = 200 and 1000, and for 16 utterances of 600 down to 45
    frames (the batched search's rows), 15 candidates each (ESPnet's 1.5 x beam) from a 500-label
    vocabulary; and every label of a 50-label vocabulary scored (ctc_weight 1, a character model)."""
    return [CtcPrefixCase(1, 10, 200), CtcPrefixCase(1, 10, 1000), CtcPrefixCase(16, 10, 600),
            CtcPrefixCase(4, 10, 200, scored=49, vocab=50)]


def decode_cases() -> list[DecodeCase]:
    """Greedy search an utterance at a time (what `attnkit transcribe` does) and 16 at a time,
    and ESPnet's batched beam search with beam 10, 16 utterances at a time."""
    return [DecodeCase("greedy", batch=1), DecodeCase("greedy", batch=16),
            DecodeCase("batch-beam", beam=10, batch=16)]


def quick_cases() -> list[Workload]:
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
        espnet_step_case("AttLoc", 10, 200),
        CtcPrefixCase(1, 10, 200),
        DecodeCase("greedy", batch=1),
    ]


def full_cases() -> list[Workload]:
    """The full sweep: encoder self-attention up to T=8192 with D 64 and 128, padded and causal
    variants, decoder steps and beams over one encoder memory, grouped kv heads, per-call overhead, multi-head
    attention at ESPnet Transformer recipe size (d_model 256, 4 heads), every ESPnet step case,
    the CTC prefix scorer and every decoding case."""
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
        # grouped-query attention (enable_gqa): 8 query heads on 2 kv heads
        sdpa_case("dec-step", 10, 8, 1, 500, 64, kv_heads=2),
        sdpa_case("enc", 4, 8, 512, 512, 64, kv_heads=2),
        TINY,
        # multi-head attention with projections, d_model 256, 4 heads
        mha_case("mha-self", 8, 512, 512, 256, 4, self_attention=True),
        mha_case("mha-self", 8, 512, 512, 256, 4, self_attention=True, lengths=True),
        mha_case("mha-cross", 10, 1, 500, 256, 4),
        mha_case("mha-cross", 4, 10, 500, 256, 4),
        *espnet_step_cases(),
        *ctc_prefix_cases(),
        *decode_cases(),
    ]
