"""The GPU path of the additive ESPnet classes (AttAdd, AttLoc, AttCov, AttCovLoc).

``prepare`` with a CuPy array (or a PyTorch CUDA tensor) as ``enc`` makes a ``Prepared`` whose
arrays live on that device (the encoder projection through the library's matrix product,
cuBLAS), and ``step`` with it runs on the library's current stream, in one call of attnkit's
fused CUDA step (src/cuda/additive.cu): the query projection, location conv, energies, softmax,
context and peak. dec_z and the states are GPU arrays of the same library and device; the
lengths and the row map are host arrays, checked on the host (each distinct row map is copied to
the device once per prepared cache, the initial uniform weights at each first step).

The weights are copied to each device once per set of weights (the copies go with the module's
``_params`` mapping, which loading replaces).
"""
from __future__ import annotations

import numpy as np

from attnkit import _core
from attnkit._arrays import describe, is_device_array
from attnkit._core import UnsupportedError
from attnkit._cuda import GpuCall

#: The classes whose steps run on the GPU; the others raise UnsupportedError from prepare.
GPU_CLASSES = ("AttAdd", "AttLoc", "AttCov", "AttCovLoc")


def device_weights(module, call: GpuCall, like) -> dict:
    """The module's weights as arrays of ``call``'s library on its device (copied once)."""
    cache = module.__dict__.get("_device_cache")
    if cache is None or cache[0] is not module._params:
        cache = module._device_cache = (module._params, {})
    key = (call.lib.name, call.device)
    if key not in cache[1]:
        weights = {name: call.lib.from_host(np.ascontiguousarray(w), like) for name, w in module._params.items()}
        weights["one_tap"] = call.lib.from_host(np.ones((1, 1, 1), module.dtype), like)  # AttCov's 1-tap conv
        cache[1][key] = weights
    return cache[1][key]


def to_device_like(like, host: np.ndarray):
    """A host array copied to the library and device of GPU array ``like``."""
    call = GpuCall("attnkit.espnet", {"like": like})
    with call:
        return call.lib.from_host(host, like)


def prepare_on_device(module, op: str, enc, lengths, prepared_type):
    """``prepare`` for a GPU ``enc``: the same checks as on the host, the cache on the device."""
    name = type(module).__name__
    if name not in GPU_CLASSES:
        raise UnsupportedError(f"{op}: enc is a GPU array, but {name} runs on the CPU only so far "
                               f"(GPU steps: {', '.join(GPU_CLASSES)}); pass a NumPy array")
    call = GpuCall(op, {"enc": enc})
    dtype = call.dtype_name(enc)
    if dtype != module.dtype.name:
        raise TypeError(f"{op}: enc must have dtype {module.dtype} (the module's dtype), got {dtype}")
    if enc.ndim != 3:
        raise ValueError(f"{op}: enc must be 3-D [B, T, E], got shape {tuple(enc.shape)}")
    B, T, E = (int(x) for x in enc.shape)
    if B == 0 or T == 0:
        raise ValueError(f"{op}: enc must not have an empty axis, got shape {tuple(enc.shape)}")
    if E != module.eprojs:
        raise ValueError(f"{op}: enc must be [B, T, E] with E = eprojs = {module.eprojs}, got shape {tuple(enc.shape)}")
    from attnkit.espnet._base import utterance_lengths  # _base imports this module

    lengths = utterance_lengths(op, lengths, B, T)
    with call:
        lib = call.lib
        enc = lib.copy(enc)
        w = device_weights(module, call, enc)
        keys = lib.linear(enc, w["mlp_enc.weight"], w["mlp_enc.bias"])
        device_lengths = lib.from_host(lengths, enc)
    lengths = lengths.copy()  # lengths_array may return the caller's own array
    lengths.flags.writeable = False
    return prepared_type(enc=enc, lengths=lengths, keys=keys, device_lengths=device_lengths, _weights=module._params)


class DeviceStep:
    """One GPU step of an additive class: checks dec_z and the state against the prepared
    utterances, then runs the query projection and the fused kernel."""

    def __init__(self, module, op: str, prepared, dec_z, rows: np.ndarray):
        self.module, self.op, self.prepared, self.rows = module, op, prepared, rows
        self.call = GpuCall(op, {"prepared.enc": prepared.enc, "dec_z": dec_z})
        self.lib = self.call.lib
        self.n = rows.shape[0]
        self.dec_z = dec_z
        if dec_z is not None:
            self.check(dec_z, "dec_z", (self.n, module.dunits), "[N, dunits]")

    def check(self, x, name: str, shape: tuple[int, ...], what: str):
        """x must be a GPU array of this step's library and device, of ``shape`` and the module's dtype."""
        if x is None or not is_device_array(x):
            raise TypeError(f"{self.op}: {name} must be a {self.lib.name} GPU array {what} like prepared.enc, "
                            f"got {describe(x)}")
        self.call.same_kind(name, x)
        if tuple(x.shape) != shape:
            raise ValueError(f"{self.op}: {name} must have shape {shape} {what}, got {tuple(x.shape)}")
        if self.call.dtype_name(x) != self.module.dtype.name:
            raise TypeError(f"{self.op}: {name} must have dtype {self.module.dtype} (the module's dtype), "
                            f"got {self.call.dtype_name(x)}")
        return x

    def state(self, x, name: str):
        """A ``[N, T]`` state array (previous weights or coverage sum)."""
        return self.check(x, name, (self.n, self.prepared.frames), "([N, T])")

    def added(self, a, b):
        """a + b on the step's device (the coverage sum)."""
        with self.call:
            return a + b

    def weight(self, name: str):
        with self.call:
            return device_weights(self.module, self.call, self.prepared.enc)[name]

    def additive(self, att_in, conv_w, conv_proj, loc_bias, scaling: float):
        """(context [N, E], weights [N, T], peak [N]) of the fused step; att_in ``[N, T]`` or
        None. One binding call: the query projection, energies, softmax, context and peak all
        run in attnkit's kernels on the step's stream."""
        p = self.prepared
        with self.call:
            lib = self.lib
            w = device_weights(self.module, self.call, p.enc)
            n, frames = self.n, p.frames
            dec_z = self.dec_z if self.dec_z is not None else lib.zeros((n, self.module.dunits), p.enc)
            dec_z = lib.contiguous(dec_z)
            ctx = lib.empty((n, p.enc.shape[2]), p.enc)
            weights = lib.empty((n, frames), p.enc)
            peak = lib.empty((n,), p.device_lengths)  # int64, as the lengths
            scratch = lib.empty((n, frames), p.enc)
            query = lib.empty((n, self.module.att_dim), p.enc)
            if att_in is not None:
                att_in = lib.contiguous(att_in[:, None, :])
            cap = self.call.capsule
            _core.additive_step_cuda(
                cap(p.keys), cap(p.enc), cap(p.device_lengths), cap(self.device_rows()), cap(dec_z),
                cap(w["mlp_dec.weight"]), cap(att_in), cap(conv_w), cap(conv_proj), cap(loc_bias),
                cap(w["gvec.weight"][0]), scaling, cap(ctx), cap(weights), cap(peak), cap(scratch), cap(query),
                self.call.stream,
            )
            return ctx, weights, peak

    def device_rows(self):
        """The row map on the device. A search steps the same rows many times: the last few maps
        stay uploaded with the prepared cache, so a step does not wait for a host copy."""
        cache = self.prepared._device_rows
        key = self.rows.tobytes()
        rows = cache.get(key)
        if rows is None:
            if len(cache) >= 8:
                cache.clear()
            rows = cache[key] = self.lib.from_host(self.rows, self.prepared.enc)
        return rows

