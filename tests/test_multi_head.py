"""attnkit.multi_head_attention in both weight layouts, against float64 and torch."""
import numpy as np
import pytest

import attnkit
from conftest import assert_close
from reference import multi_head as ref_mha

mha = attnkit.multi_head_attention


def torch_layout(rng, E, dtype, bias=True):
    p = {"in_proj_weight": rng.standard_normal((3 * E, E)) / np.sqrt(E), "out_proj.weight": rng.standard_normal((E, E)) / np.sqrt(E)}
    if bias:
        p["in_proj_bias"] = rng.standard_normal(3 * E)
        p["out_proj.bias"] = rng.standard_normal(E)
    return {n: a.astype(dtype) for n, a in p.items()}


def espnet_layout(rng, E, Ek, Ev, dtype):
    p = {}
    for name, din in (("linear_q", E), ("linear_k", Ek), ("linear_v", Ev), ("linear_out", E)):
        p[f"{name}.weight"] = (rng.standard_normal((E, din)) / np.sqrt(din)).astype(dtype)
        p[f"{name}.bias"] = rng.standard_normal(E).astype(dtype)
    return p


def split_torch(p, E):
    w, b = p["in_proj_weight"], p.get("in_proj_bias")
    bs = (None,) * 3 if b is None else (b[:E], b[E : 2 * E], b[2 * E :])
    return w[:E], bs[0], w[E : 2 * E], bs[1], w[2 * E :], bs[2], p["out_proj.weight"], p.get("out_proj.bias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("heads,E", [(1, 8), (4, 32), (3, 33)])
def test_torch_layout_self_and_cross_attention(isa, rng, dtype, heads, E):
    p = torch_layout(rng, E, dtype)
    x = rng.standard_normal((3, 11, E)).astype(dtype)
    mem = rng.standard_normal((3, 17, E)).astype(dtype)
    kl = [17, 4, 9]
    out, w = mha(x, x, x, p, num_heads=heads, return_weights=True)
    ref, ref_w = ref_mha(x, x, x, *split_torch(p, E), heads)
    assert_close(out, ref, dtype, "self-attention")
    assert_close(w, ref_w, dtype, "self-attention weights")
    out = mha(x, mem, mem, p, num_heads=heads, key_lengths=kl, causal=False)
    assert_close(out, ref_mha(x, mem, mem, *split_torch(p, E), heads, key_lengths=kl)[0], dtype, "cross-attention")


def test_espnet_layout_with_different_key_sizes(isa, rng):
    E, Ek, Ev = 24, 10, 7
    p = espnet_layout(rng, E, Ek, Ev, np.float64)
    q, k, v = rng.standard_normal((2, 5, E)), rng.standard_normal((2, 9, Ek)), rng.standard_normal((2, 9, Ev))
    ws = [p[f"{n}.{t}"] for n in ("linear_q", "linear_k", "linear_v", "linear_out") for t in ("weight", "bias")]
    mask = rng.random((2, 1, 5, 9)) > 0.3
    out = mha(q, k, v, p, num_heads=4, mask=mask, causal=True)
    assert_close(out, ref_mha(q, k, v, *ws, 4, mask=mask, causal=True)[0], np.float64, "espnet layout")


def test_matches_torch_multihead_attention(rng):
    torch = pytest.importorskip("torch")
    E, H = 64, 4
    m = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
    p = {n: t.detach().numpy() for n, t in m.state_dict().items()}
    x = rng.standard_normal((2, 30, E)).astype(np.float32)
    pad = np.zeros((2, 30), dtype=bool)
    pad[1, 21:] = True  # torch: True = ignore
    with torch.inference_mode():
        ref, ref_w = m(*(torch.from_numpy(x),) * 3, key_padding_mask=torch.from_numpy(pad), average_attn_weights=False)
    out, w = mha(x, x, x, p, num_heads=H, key_lengths=[30, 21], return_weights=True)
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(w, ref_w.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_shape", [(4, 1, 13), (4, 9, 13), (1, 9, 13)])
def test_matches_espnet_multiheaded_attention_with_its_masks(rng, mask_shape):
    """ESPnet's masks as ESPnet takes them, (B, 1, Tk) and (B, Tq, Tk), one for every head; with B
    = H = 4, reading a 3-D mask as [H, Tq, Tk] would also broadcast, to other numbers."""
    torch = pytest.importorskip("torch")
    espnet_attention = pytest.importorskip("espnet.nets.pytorch_backend.transformer.attention")
    torch.manual_seed(0)
    m = espnet_attention.MultiHeadedAttention(4, 32, 0.0).eval()
    p = {n: t.detach().numpy() for n, t in m.state_dict().items()}
    q, kv = rng.standard_normal((4, 9, 32)).astype(np.float32), rng.standard_normal((4, 13, 32)).astype(np.float32)
    mask = rng.random(mask_shape) > 0.3
    mask[..., 0] = True  # every query keeps a key
    with torch.no_grad():
        ref = m(torch.from_numpy(q), torch.from_numpy(kv), torch.from_numpy(kv), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(mha(q, kv, kv, p, num_heads=4, mask=mask), ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("self_attention", [True, False])
def test_sequence_first_matches_torch_default_layout(rng, self_attention):
    """batch_first=False takes and returns [T, B, E], torch.nn.MultiheadAttention's default."""
    torch = pytest.importorskip("torch")
    E, H = 16, 4
    m = torch.nn.MultiheadAttention(E, H).eval()
    p = {n: t.detach().numpy() for n, t in m.state_dict().items()}
    q = rng.standard_normal((9, 3, E)).astype(np.float32)
    kv = q if self_attention else rng.standard_normal((12, 3, E)).astype(np.float32)
    pad = np.arange(kv.shape[0])[None, :] >= np.array([kv.shape[0], 5, 7])[:, None]  # torch: True = ignore
    with torch.inference_mode():
        ref, ref_w = m(torch.from_numpy(q), torch.from_numpy(kv), torch.from_numpy(kv),
                       key_padding_mask=torch.from_numpy(pad), average_attn_weights=False)
    out, w = mha(q, kv, kv, p, num_heads=H, key_lengths=[kv.shape[0], 5, 7], return_weights=True, batch_first=False)
    assert out.shape == (9, 3, E) and w.shape == (3, H, 9, kv.shape[0])
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(w, ref_w.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_cross_attention_with_other_key_sizes_and_a_causal_mask(rng, bias):
    """kdim/vdim != E (separate q/k/v weights), with and without biases; torch's bool attn_mask
    is True = masked, attnkit's causal=True the same upper-left triangle as its is_causal."""
    torch = pytest.importorskip("torch")
    E, H, Tq, Tk = 24, 3, 7, 11
    m = torch.nn.MultiheadAttention(E, H, bias=bias, kdim=10, vdim=6, batch_first=True).eval()
    p = {n: t.detach().numpy() for n, t in m.state_dict().items()}
    q = rng.standard_normal((2, Tq, E)).astype(np.float32)
    k, v = rng.standard_normal((2, Tk, 10)).astype(np.float32), rng.standard_normal((2, Tk, 6)).astype(np.float32)
    above = np.triu(np.ones((Tq, Tk), bool), 1)
    with torch.inference_mode():
        ref, _ = m(*map(torch.from_numpy, (q, k, v)), attn_mask=torch.from_numpy(above))
    np.testing.assert_allclose(mha(q, k, v, p, num_heads=H, causal=True), ref.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["add_bias_kv", "espnet_rel_pos"])
def test_variants_with_other_math_are_refused(rng, variant):
    p = torch_layout(rng, 8, np.float32)
    if variant == "add_bias_kv":
        p["bias_k"], p["bias_v"] = np.zeros((1, 1, 8), np.float32), np.zeros((1, 1, 8), np.float32)
        match = r"params hold \['bias_k', 'bias_v'\], weights of torch.nn.MultiheadAttention\(add_bias_kv=True\)"
    else:
        p["pos_bias_u"], p["linear_pos.weight"] = np.zeros((2, 4), np.float32), np.zeros((8, 8), np.float32)
        match = r"params hold \['linear_pos.weight', 'pos_bias_u'\], weights of ESPnet's RelPosition"
    x = rng.standard_normal((1, 3, 8)).astype(np.float32)
    with pytest.raises(attnkit.UnsupportedError, match=match):
        mha(x, x, x, p, num_heads=2)


def test_bad_params_are_named(rng):
    x = rng.standard_normal((1, 3, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="params must hold torch.nn.MultiheadAttention weights"):
        mha(x, x, x, {"weight": np.zeros((8, 8))}, num_heads=2)
    p = torch_layout(rng, 8, np.float32)
    p["out_proj.weight"] = np.zeros((8, 7), np.float32)
    with pytest.raises(ValueError, match=r"params\['out_proj.weight'\] must have shape \(8, 8\), got \(8, 7\)"):
        mha(x, x, x, p, num_heads=2)
    with pytest.raises(ValueError, match="num_heads must be a positive integer dividing E=8, got 3"):
        mha(x, x, x, torch_layout(rng, 8, np.float32), num_heads=3)
    with pytest.raises(TypeError, match="params must be a dict"):
        mha(x, x, x, [1, 2], num_heads=2)


# ---- the layer: weights packed once, a memory's keys and values projected once ----------------


def separate_torch_layout(rng, E, Ek, Ev, dtype):
    """torch.nn.MultiheadAttention's names when kdim/vdim differ from E (no packed in_proj)."""
    p = {"q_proj_weight": rng.standard_normal((E, E)) / np.sqrt(E), "k_proj_weight": rng.standard_normal((E, Ek)),
         "v_proj_weight": rng.standard_normal((E, Ev)), "in_proj_bias": rng.standard_normal(3 * E),
         "out_proj.weight": rng.standard_normal((E, E)) / np.sqrt(E)}
    return {n: a.astype(dtype) for n, a in p.items()}


def reference_weights(p, E):
    if "in_proj_weight" in p:
        return split_torch(p, E)
    if "q_proj_weight" in p:
        b = p["in_proj_bias"]
        return (p["q_proj_weight"], b[:E], p["k_proj_weight"], b[E : 2 * E], p["v_proj_weight"], b[2 * E :],
                p["out_proj.weight"], None)
    return [p[f"{n}.{t}"] for n in ("linear_q", "linear_k", "linear_v", "linear_out") for t in ("weight", "bias")]


LAYOUTS = {"torch": lambda rng, dt: torch_layout(rng, 12, dt), "torch_kdim": lambda rng, dt: separate_torch_layout(rng, 12, 5, 7, dt),
           "espnet": lambda rng, dt: espnet_layout(rng, 12, 9, 4, dt)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layer_matches_the_reference_and_the_function(isa, rng, dtype, layout):
    p = LAYOUTS[layout](rng, dtype)
    layer = attnkit.MultiHeadAttention(p, num_heads=3, dtype=dtype)
    E, Ek, Ev = 12, layer.kdim, layer.vdim
    x = rng.standard_normal((3, 6, E)).astype(dtype)
    k, v = rng.standard_normal((3, 10, Ek)).astype(dtype), rng.standard_normal((3, 10, Ev)).astype(dtype)
    kl = [10, 1, 7]
    out, w = layer(x, k, v, key_lengths=kl, return_weights=True)
    ref, ref_w = ref_mha(x, k, v, *reference_weights(p, E), 3, key_lengths=kl)
    assert_close(out, ref, dtype, f"{layout} cross-attention")
    assert_close(w, ref_w, dtype, f"{layout} weights")
    assert_close(out, mha(x, k, v, p, num_heads=3, key_lengths=kl), dtype, f"{layout} layer vs function")
    if layout == "torch":
        mask = rng.random((3, 6, 6)) > 0.3
        assert_close(layer(x, x, x, mask=mask, causal=True), ref_mha(x, x, x, *reference_weights(p, E), 3, mask=mask,
                                                                      causal=True)[0], dtype, "self-attention")
    seq_first = layer(x.transpose(1, 0, 2), k.transpose(1, 0, 2), v.transpose(1, 0, 2), key_lengths=kl,
                      batch_first=False)
    np.testing.assert_array_equal(seq_first, out.transpose(1, 0, 2))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layer_memory_gives_the_bits_of_its_key_and_value(rng, layout):
    """A decoder's cross-attention steps on a memory projected once: the same numbers as projecting
    the key and value in every call, with lengths, masks and weights."""
    p = LAYOUTS[layout](rng, np.float32)
    layer = attnkit.MultiHeadAttention(p, num_heads=3)
    k = rng.standard_normal((4, 21, layer.kdim)).astype(np.float32)
    v = k if layer.kdim == layer.vdim else rng.standard_normal((4, 21, layer.vdim)).astype(np.float32)
    memory = layer.memory(k, None if v is k else v)
    assert isinstance(memory, attnkit.MultiHeadMemory) and memory.keys.shape == (4, 21, 12)
    for step in range(3):
        y = rng.standard_normal((4, 1, 12)).astype(np.float32)
        mask = rng.random((4, 1, 21)) > 0.2
        got = layer(y, memory=memory, key_lengths=[21, 3, 17, 1], mask=mask, return_weights=True)
        want = layer(y, k, v, key_lengths=[21, 3, 17, 1], mask=mask, return_weights=True)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    seq_first = layer.memory(k.transpose(1, 0, 2), None if v is k else v.transpose(1, 0, 2), batch_first=False)
    np.testing.assert_array_equal(seq_first.values, memory.values)


def test_layer_refuses_bad_arguments(rng):
    p = torch_layout(rng, 8, np.float32)
    layer = attnkit.MultiHeadAttention(p, num_heads=2)
    assert "embed_dim=8, num_heads=2" in repr(layer)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    memory = layer.memory(rng.standard_normal((2, 5, 8)).astype(np.float32))
    with pytest.raises(TypeError, match="query must have the layer's dtype float32, got float64"):
        layer(x.astype(np.float64), x, x)
    with pytest.raises(ValueError, match=r"key must have 8 features \(last axis\), got shape \(2, 3, 7\)"):
        layer(x, x[..., :7], x)
    with pytest.raises(ValueError, match="key and value, or memory, not both"):
        layer(x, x, x, memory=memory)
    with pytest.raises(ValueError, match=r"key and value \(or memory=\) are required"):
        layer(x)
    with pytest.raises(ValueError, match=r"memory must hold \[B=3 \(or 1\), Tk, 8\]"):
        layer(np.concatenate([x, x[:1]]), memory=memory)
    with pytest.raises(TypeError, match="memory must come from MultiHeadAttention.memory"):
        layer(x, memory=(memory.keys, memory.values))
    with pytest.raises(ValueError, match="key and value must be"):
        layer.memory(x, x[:, :2])
    with pytest.raises(ValueError, match="num_heads must be a positive integer dividing E=8, got 3"):
        attnkit.MultiHeadAttention(p, num_heads=3)
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got float16"):
        attnkit.MultiHeadAttention(p, num_heads=2, dtype=np.float16)
    with pytest.raises(ValueError, match="params must hold torch.nn.MultiheadAttention weights"):
        attnkit.MultiHeadAttention({"weight": np.zeros((8, 8))}, num_heads=2)
    with pytest.raises(ValueError, match=r"must be 2-D weights, got shapes \[\(8, 8\), 'missing', 'missing'\]"):
        attnkit.MultiHeadAttention({"q_proj_weight": np.zeros((8, 8))}, num_heads=2)
    with pytest.raises(attnkit.UnsupportedError, match="bias_k"):
        attnkit.MultiHeadAttention({**p, "bias_k": np.zeros((1, 1, 8))}, num_heads=2)


def test_layer_memory_of_one_utterance_serves_a_beam(rng):
    """A memory of batch 1 is shared by every query (a beam's hypotheses), with the key lengths and
    masks of the queries: the numbers of the memory repeated per query."""
    p = torch_layout(rng, 16, np.float64)
    layer = attnkit.MultiHeadAttention(p, num_heads=4, dtype=np.float64)
    enc = rng.standard_normal((1, 30, 16))
    memory = layer.memory(enc)
    y = rng.standard_normal((5, 1, 16))
    mask = rng.random((5, 1, 30)) > 0.2
    got, w = layer(y, memory=memory, key_lengths=[30, 30, 12, 30, 1], mask=mask, return_weights=True)
    repeated = attnkit.MultiHeadMemory(*(np.repeat(a, 5, axis=0) for a in memory))
    want, want_w = layer(y, memory=repeated, key_lengths=[30, 30, 12, 30, 1], mask=mask, return_weights=True)
    assert_close(got, want, np.float64, "shared memory")
    assert_close(w, want_w, np.float64, "shared memory weights")
