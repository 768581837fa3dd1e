"""Backends: what runs a case. Each turns NumPy inputs into zero-argument callables to time.

Adding a backend: subclass `Backend`, list the ops it runs in `ops`, implement `prepare` (and
`available`, `supports`, `active`, `sync` where needed), and add it to `make_backends`. CUDA backends subclass
`CudaBackend`: they are skipped with a note when attnkit sees no CUDA device, must run on the
current stream and make `sync()` wait for it (the timer calls it after every sample).
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
from typing import Callable

import numpy as np

import attnkit
from attnkit.bench import ctc_prefix, decode, espnet_step
from attnkit.bench.cases import Workload

# A naive implementation that materialises [B, H, Tq, Tk] scores is skipped above this size.
NUMPY_SCORES_LIMIT = 2 << 30


class Backend:
    name = "?"
    device = "cpu"
    ops: tuple[str, ...] = ("sdpa", "mha", "espnet-step")
    dtypes: tuple[str, ...] = ("float32", "float64")

    def available(self) -> tuple[bool, str]:
        """(usable in this process, note saying why not / what it is)."""
        return True, ""

    def supports(self, case: Workload) -> str | None:
        """None if the case can run here, else the reason it is skipped."""
        if case.dtype not in self.dtypes:
            return f"{self.name} does not run {case.dtype}"
        if case.op in self.ops:
            return None
        if case.op == "decode":
            return "decoding is timed on attnkit only (benchmarks/bench_decode.py runs ESPnet's PyTorch loops)"
        return f"{self.name} does not run {case.op}"

    def prepare(self, case: Workload, copies: list[dict], params: dict | None) -> list[Callable[[], object]]:
        """One callable per input copy; setup (conversions, modules, masks) happens here, untimed."""
        raise NotImplementedError

    def active(self):
        """Context manager around warm-up and timing (global modes: ISA, inference mode)."""
        return contextlib.nullcontext()

    def sync(self) -> None:
        """Waits for queued work (device backends)."""

    # Device backends: runs a sample's calls and returns their time in seconds from device events.
    timed: Callable[[list], float] | None = None

    def set_threads(self, n: int) -> None:
        """Sets this backend's own thread pool, beyond attnkit's and NumPy's BLAS."""


# ---- attnkit (CPU) ------------------------------------------------------------------------------


class AttnkitCPU(Backend):
    """attnkit's public API, with the active ISA, or a forced one (`--isa avx2` -> attnkit[avx2])."""

    ops = ("sdpa", "mha", "espnet-step", "ctc-prefix", "decode")

    def __init__(self, isa: str | None = None):
        self.isa = isa
        self.name = "attnkit" if isa is None else f"attnkit[{isa}]"

    def available(self):
        cfg = attnkit.show_config()
        if self.isa is None:
            return True, f"ISA {cfg['cpu_isa_active']}"
        before = attnkit.get_cpu_isa()
        try:
            attnkit.set_cpu_isa(self.isa)
        except (ValueError, NotImplementedError) as e:
            return False, str(e)
        finally:
            attnkit.set_cpu_isa(before)
        return True, f"ISA {self.isa} (forced)"

    @contextlib.contextmanager
    def active(self):
        if self.isa is None:
            yield
            return
        before = attnkit.get_cpu_isa()
        attnkit.set_cpu_isa(self.isa)
        try:
            yield
        finally:
            attnkit.set_cpu_isa(before)

    def prepare(self, case, copies, params):
        if case.op == "espnet-step":
            return espnet_step.attnkit_calls(case, copies, params)
        if case.op == "ctc-prefix":
            return ctc_prefix.attnkit_calls(case, copies)
        if case.op == "decode":
            return decode.attnkit_calls(case, copies)
        if case.op == "sdpa":
            f, causal, gqa = attnkit.scaled_dot_product_attention, case.causal, case.grouped
            return [lambda c=c: f(c["q"], c["k"], c["v"], key_lengths=c["key_lengths"], causal=causal, enable_gqa=gqa)
                    for c in copies]
        f, H = attnkit.multi_head_attention, case.H
        return [lambda c=c: f(c["query"], c["key"], c["value"], params, num_heads=H,
                              key_lengths=c["key_lengths"], causal=case.causal)
                for c in copies]


# ---- NumPy --------------------------------------------------------------------------------------


def numpy_sdpa(q, k, v, key_lengths=None, causal=False, scale=None, xp=np):
    """The textbook computation: S = scale q k^T, masked with -inf, softmax over keys, S v, in
    NumPy (or CuPy: xp=cupy); grouped kv heads repeated to q's. (A query with no visible key
    would give NaN; the benchmark cases have none.)"""
    if k.shape[1] != q.shape[1]:
        k, v = (xp.repeat(x, q.shape[1] // x.shape[1], axis=1) for x in (k, v))
    Tq, Tk = q.shape[-2], k.shape[-2]
    s = xp.matmul(q, xp.swapaxes(k, -1, -2))
    s *= (1.0 / math.sqrt(q.shape[-1])) if scale is None else scale
    keep = None
    if key_lengths is not None:
        keep = xp.arange(Tk) < xp.asarray(key_lengths)[:, None, None, None]  # [B, 1, 1, Tk]
    if causal:
        c = xp.arange(Tk)[None, :] <= xp.arange(Tq)[:, None]  # [Tq, Tk]: PyTorch's is_causal
        keep = c if keep is None else keep & c
    if keep is not None:
        s = xp.where(keep, s, -xp.inf).astype(s.dtype, copy=False)
    s -= s.max(axis=-1, keepdims=True)
    xp.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return xp.matmul(s, v)


def numpy_mha(query, key, value, params, num_heads, key_lengths=None, causal=False):
    """Projections with x W^T + b, heads by reshape/transpose, numpy_sdpa, output projection."""
    B, Tq, E = query.shape
    Tk, H = key.shape[1], num_heads
    w, b = params["in_proj_weight"], params["in_proj_bias"]
    q = query @ w[:E].T + b[:E]
    k = key @ w[E:2 * E].T + b[E:2 * E]
    v = value @ w[2 * E:].T + b[2 * E:]
    heads = lambda x, t: x.reshape(B, t, H, E // H).transpose(0, 2, 1, 3)
    ctx = numpy_sdpa(heads(q, Tq), heads(k, Tk), heads(v, Tk), key_lengths, causal)
    return ctx.transpose(0, 2, 1, 3).reshape(B, Tq, E) @ params["out_proj.weight"].T + params["out_proj.bias"]


class NumpyCPU(Backend):
    name = "numpy"
    ops = ("sdpa", "mha", "espnet-step", "ctc-prefix")

    def available(self):
        return True, f"NumPy {np.__version__}"

    def supports(self, case):
        if case.scores_bytes() > NUMPY_SCORES_LIMIT:
            return f"would materialise {case.scores_bytes() / 2**30:.1f} GiB of scores"
        return super().supports(case)

    def prepare(self, case, copies, params):
        if case.op == "espnet-step":
            return espnet_step.numpy_calls(case, copies, params)
        if case.op == "ctc-prefix":
            return ctc_prefix.numpy_calls(case, copies)
        if case.op == "sdpa":
            return [lambda c=c: numpy_sdpa(c["q"], c["k"], c["v"], c["key_lengths"], case.causal) for c in copies]
        return [lambda c=c: numpy_mha(c["query"], c["key"], c["value"], params, case.H, c["key_lengths"], case.causal)
                for c in copies]


# ---- PyTorch (CPU) ------------------------------------------------------------------------------


class TorchCPU(Backend):
    """torch.nn.functional.scaled_dot_product_attention, torch.nn.MultiheadAttention (eval) and
    ESPnet's attention steps in eager ops (`espnet_step.torch_step`), under torch.inference_mode().
    Key lengths become a boolean mask (SDPA, True = attend) or a key_padding_mask (MHA, True =
    ignore), built once per input copy outside the timing."""

    name = "torch"
    ops = ("sdpa", "mha", "espnet-step", "ctc-prefix")

    def available(self):
        if importlib.util.find_spec("torch") is None:
            return False, "not installed (pip install torch)"
        import torch

        return True, f"torch {torch.__version__}, {torch.get_num_threads()} threads"

    def supports(self, case):
        if case.op == "mha" and case.causal:
            return "causal multi-head attention is not benchmarked"
        if case.op == "ctc-prefix" and importlib.util.find_spec("espnet") is None:
            return "the CTC peer is ESPnet's CTCPrefixScoreTH: needs espnet"
        return super().supports(case)

    def active(self):
        import torch

        return torch.inference_mode()

    def set_threads(self, n):
        import torch

        torch.set_num_threads(n)

    def prepare(self, case, copies, params):
        import torch

        if case.op == "espnet-step":
            return espnet_step.torch_calls(case, copies, params)
        if case.op == "ctc-prefix":
            return ctc_prefix.torch_calls(torch, case, copies)
        F = torch.nn.functional
        if case.op == "sdpa":
            out = []
            for c in copies:
                q, k, v = (torch.from_numpy(c[x]) for x in ("q", "k", "v"))
                mask, is_causal = self._sdpa_mask(torch, case, c["key_lengths"])
                out.append(lambda q=q, k=k, v=v, m=mask, ic=is_causal, g=case.grouped:
                           F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=ic, enable_gqa=g))
            return out
        dtype = getattr(torch, case.dtype)
        m = torch.nn.MultiheadAttention(case.E, case.H, batch_first=True, dtype=dtype).eval()
        with torch.no_grad():
            m.in_proj_weight.copy_(torch.from_numpy(params["in_proj_weight"]))
            m.in_proj_bias.copy_(torch.from_numpy(params["in_proj_bias"]))
            m.out_proj.weight.copy_(torch.from_numpy(params["out_proj.weight"]))
            m.out_proj.bias.copy_(torch.from_numpy(params["out_proj.bias"]))
        out = []
        for c in copies:
            # keep the identity of shared arrays (self-attention: query is key is value)
            tensors = {}
            q, k, v = (tensors.setdefault(id(c[x]), torch.from_numpy(c[x])) for x in ("query", "key", "value"))
            kpm = None
            if c["key_lengths"] is not None:
                kpm = torch.arange(case.Tk)[None, :] >= torch.from_numpy(c["key_lengths"])[:, None]
            out.append(lambda q=q, k=k, v=v, kpm=kpm: m(q, k, v, key_padding_mask=kpm, need_weights=False))
        return out

    @staticmethod
    def _sdpa_mask(torch, case, key_lengths):
        """is_causal alone where it says everything (attnkit's causal=True is torch's is_causal);
        with key lengths, one bool mask of both."""
        if key_lengths is None:
            return None, case.causal
        keep = torch.ones(case.B, 1, case.Tq, case.Tk, dtype=torch.bool)
        if key_lengths is not None:
            keep &= (torch.arange(case.Tk)[None, :] < torch.from_numpy(key_lengths)[:, None])[:, None, None, :]
        if case.causal:
            keep &= torch.arange(case.Tk)[None, :] <= torch.arange(case.Tq)[:, None]
        return keep, False


# ---- ONNX Runtime (CPU) -------------------------------------------------------------------------


class OnnxRuntimeCPU(Backend):
    """ONNX Runtime's CPU execution provider on the graph torch.onnx exports for SDPA: Transpose,
    MatMul, Mul by the scale, Add of an additive mask (key lengths, causal; built once per input
    copy outside the timing), Softmax, MatMul; every graph optimisation on. One session per case,
    with the thread count the runner sets. float32 only."""

    name = "onnxruntime"
    ops = ("sdpa",)

    def __init__(self):
        self._threads = 0  # 0: ONNX Runtime's default

    def available(self):
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
            return False, "not installed (pip install onnxruntime onnx)"
        import onnxruntime

        return True, f"onnxruntime {onnxruntime.__version__}"

    def supports(self, case):
        if case.dtype != "float32":
            return f"dtype {case.dtype} not benchmarked"
        reason = super().supports(case)
        if reason is None and case.grouped:
            return "grouped kv heads are not benchmarked (its graph repeats no heads)"
        return reason

    def set_threads(self, n):
        self._threads = n

    def prepare(self, case, copies, params):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        masked = case.causal or copies[0]["key_lengths"] is not None
        f32 = TensorProto.FLOAT
        inputs = [helper.make_tensor_value_info(n, f32, shape) for n, shape in (
            ("q", [case.B, case.H, case.Tq, case.D]), ("k", [case.B, case.H, case.Tk, case.D]),
            ("v", [case.B, case.H, case.Tk, case.dv]))]
        nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                 helper.make_node("MatMul", ["q", "kt"], ["s"]),
                 helper.make_node("Mul", ["s", "scale"], ["ss"])]
        if masked:
            inputs.append(helper.make_tensor_value_info("mask", f32, [case.B, 1, case.Tq, case.Tk]))
            nodes.append(helper.make_node("Add", ["ss", "mask"], ["sm"]))
        nodes += [helper.make_node("Softmax", ["sm" if masked else "ss"], ["p"], axis=-1),
                  helper.make_node("MatMul", ["p", "v"], ["o"])]
        scale = helper.make_tensor("scale", f32, [], [1.0 / math.sqrt(case.D)])
        out = helper.make_tensor_value_info("o", f32, [case.B, case.H, case.Tq, case.dv])
        # IR version 8 goes with opset 17; onnx's default IR version can be newer than the runtime's.
        model = helper.make_model(helper.make_graph(nodes, "sdpa", inputs, [out], [scale]),
                                  opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        calls = []
        for c in copies:
            feeds = {"q": c["q"], "k": c["k"], "v": c["v"]}
            if masked:
                keep = np.ones((case.B, 1, case.Tq, case.Tk), bool)
                if c["key_lengths"] is not None:
                    keep &= (np.arange(case.Tk)[None, :] < c["key_lengths"][:, None])[:, None, None, :]
                if case.causal:  # query i sees keys j <= i, as torch's is_causal and attnkit's causal=True
                    keep &= np.arange(case.Tk)[None, :] <= np.arange(case.Tq)[:, None]
                feeds["mask"] = np.where(keep, 0.0, -np.inf).astype(np.float32)
            calls.append(lambda f=feeds: session.run(None, f))
        return calls


# ---- CUDA ----------------------------------------------------------------------------------------


class CudaBackend(Backend):
    """Base of the GPU backends: skipped with a note when attnkit sees no CUDA device or the
    backend's package is missing. Inputs are copied to the device in `prepare` (key lengths too,
    so no call uploads anything), calls launch on the current stream, and a sample is timed with
    CUDA events around its calls (`timed`)."""

    device = "cuda"
    ops = ("sdpa",)
    dtypes = ("float32", "float16")
    requires = "cupy"  # the device arrays and events; torch-cuda needs torch instead

    def available(self):
        cfg = attnkit.show_config()
        if not cfg["cuda_devices"]:
            return False, f"no CUDA device ({cfg['cuda_note'] or 'none found'})"
        if importlib.util.find_spec(self.requires) is None:
            return False, f"{self.requires} not installed"
        return True, self.describe()

    def describe(self) -> str:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return f"CuPy {cupy.__version__}, {props['name'].decode()}"

    def sync(self):
        import cupy

        cupy.cuda.get_current_stream().synchronize()

    def timed(self, batch):
        import cupy

        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for f in batch:
            f()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) * 1e-3

    @staticmethod
    def device_copies(case, copies):
        import cupy

        return [{"q": cupy.asarray(c["q"]), "k": cupy.asarray(c["k"]), "v": cupy.asarray(c["v"]),
                 "key_lengths": None if c["key_lengths"] is None else cupy.asarray(c["key_lengths"])}
                for c in copies]


class AttnkitCUDA(CudaBackend):
    """attnkit.scaled_dot_product_attention and the additive ESPnet classes' steps on CuPy arrays."""

    name = "attnkit-cuda"
    ops = ("sdpa", "espnet-step", "ctc-prefix")
    dtypes = ("float32", "float16", "float64")

    def supports(self, case):
        if case.op == "espnet-step":
            from attnkit.espnet._device import GPU_CLASSES

            if case.cls not in GPU_CLASSES:
                return f"{case.cls} has no GPU step yet (GPU: {', '.join(GPU_CLASSES)})"
            if case.dtype == "float16":
                return "the ESPnet steps run in float32 and float64"
        elif case.op == "ctc-prefix":
            if case.dtype == "float16":
                return "the CTC prefix scores run in float32 and float64"
        elif case.dtype == "float64":
            return "attnkit-cuda runs SDPA in float32, float16 and bfloat16"
        return super().supports(case)

    def prepare(self, case, copies, params):
        if case.op == "espnet-step":
            return self._espnet_calls(case, copies, params)
        if case.op == "ctc-prefix":
            import cupy

            return ctc_prefix.attnkit_calls(case, copies, cupy)
        return [lambda c=c: attnkit.scaled_dot_product_attention(c["q"], c["k"], c["v"], key_lengths=c["key_lengths"],
                                                                 causal=case.causal, enable_gqa=case.grouped)
                for c in self.device_copies(case, copies)]

    @staticmethod
    def _espnet_calls(case, copies, params):
        import cupy

        att = espnet_step.make_attention(case, params=params)
        calls = []
        for c in copies:
            prepared = att.prepare(cupy.asarray(c["enc"]), c["lengths"])
            state = espnet_step.attnkit_state(case, c["a_prev"])
            dec_z, state = cupy.asarray(c["dec_z"]), None if state is None else cupy.asarray(state)
            calls.append(lambda prepared=prepared, dec_z=dec_z, state=state, rows=c["rows"]:
                         att.step(prepared, dec_z, state, rows=rows))
        return calls


class CupyCUDA(CudaBackend):
    """The naive computation in CuPy: scores materialised, softmax, product with V."""

    name = "cupy"

    def supports(self, case):
        if case.scores_bytes() > 4 * NUMPY_SCORES_LIMIT:
            return f"would materialise {case.scores_bytes() / 2**30:.1f} GiB of scores"
        return super().supports(case)

    def prepare(self, case, copies, params):
        import cupy

        def run(c):
            return numpy_sdpa(c["q"], c["k"], c["v"], c["key_lengths"], case.causal, xp=cupy)

        return [lambda c=c: run(c) for c in self.device_copies(case, copies)]


class TorchCUDA(CudaBackend):
    """torch.nn.functional.scaled_dot_product_attention on CUDA tensors (flash / cuDNN / memory-
    efficient kernels, PyTorch's choice), masks built once per copy as for the CPU backend."""

    name = "torch-cuda"
    requires = "torch"
    ops = ("sdpa", "espnet-step", "ctc-prefix")
    dtypes = ("float32", "float16", "float64")

    def supports(self, case):
        if case.op in ("espnet-step", "ctc-prefix") and case.dtype == "float16":
            return f"{case.op} is timed in float32 and float64"
        if case.op == "ctc-prefix" and importlib.util.find_spec("espnet") is None:
            return "the CTC peer is ESPnet's CTCPrefixScoreTH: needs espnet"
        if case.op == "sdpa" and case.dtype == "float64":
            return "SDPA on the GPU is timed in float32 and float16"
        return super().supports(case)

    def available(self):
        ok, note = super().available()
        if not ok:
            return ok, note
        import torch

        if not torch.cuda.is_available():
            return False, f"torch {torch.__version__} sees no CUDA device"
        return True, f"torch {torch.__version__}, {torch.cuda.get_device_name()}"

    def active(self):
        import torch

        return torch.inference_mode()

    def sync(self):
        import torch

        torch.cuda.synchronize()

    def timed(self, batch):
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for f in batch:
            f()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3

    def prepare(self, case, copies, params):
        import torch

        if case.op == "espnet-step":
            calls = []
            for c in copies:
                args = espnet_step.torch_reference_inputs(torch, case, c, params)
                args = _to_cuda(args)
                calls.append(lambda args=args: espnet_step.torch_step(torch, case.cls, *args, heads=case.heads))
            return calls
        if case.op == "ctc-prefix":
            return ctc_prefix.torch_calls(torch, case, copies, "cuda")
        F = torch.nn.functional
        out = []
        for c in copies:
            q, k, v = (torch.from_numpy(c[x]).cuda() for x in ("q", "k", "v"))
            mask, is_causal = TorchCPU._sdpa_mask(torch, case, c["key_lengths"])
            mask = None if mask is None else mask.cuda()
            out.append(lambda q=q, k=k, v=v, m=mask, ic=is_causal, g=case.grouped:
                       F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=ic, enable_gqa=g))
        return out


def _to_cuda(x):
    """The tensors of a nest of dicts, lists and tuples, copied to the current CUDA device."""
    if isinstance(x, dict):
        return {k: _to_cuda(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cuda(v) for v in x)
    return x.cuda()


CPU_BACKENDS = ("attnkit", "numpy", "torch", "onnxruntime")
CUDA_BACKENDS = ("attnkit-cuda", "cupy", "torch-cuda")
ALL_BACKENDS = CPU_BACKENDS + CUDA_BACKENDS


def make_backends(names: list[str], isas: list[str] | None = None) -> list[Backend]:
    """Backends by name. With `isas`, "attnkit" becomes one backend per ISA (attnkit[avx2], ...);
    the ISA name "all" means every ISA this build and CPU support."""
    unknown = [n for n in names if n not in ALL_BACKENDS]
    if unknown:
        raise ValueError(f"bench: backends must be among {', '.join(ALL_BACKENDS)}, got {', '.join(unknown)}")
    if isas and "all" in isas:
        isas = list(attnkit.show_config()["cpu_isa_supported"])
    out: list[Backend] = []
    for n in names:
        if n == "attnkit":
            out.extend([AttnkitCPU(i) for i in isas] if isas else [AttnkitCPU()])
        else:
            out.append({"numpy": NumpyCPU, "torch": TorchCPU, "onnxruntime": OnnxRuntimeCPU,
                        "attnkit-cuda": AttnkitCUDA, "cupy": CupyCUDA, "torch-cuda": TorchCUDA}[n]())
    return out
