"""Building blocks shared by the Gemma graph builders: norms, RoPE, masks, KV cache, attention.

Every graph edgepack exports follows one contract, the one LiteRT-LM's engine drives:

- inputs  `input_pos` [T] int32, `mask` [1, 1, T, C] float32 (additive: 0 or MASK_VALUE, the
  global causal mask), `kv_cache_k_i` [1, KVH, L, D], `kv_cache_v_i` [1, KVH, D, L], where L is
  the context C, or for a sliding-window layer a shorter ring (contract.cache_lengths; such
  layers build their own mask from input_pos);
- outputs the updated caches under the same names (TFLite) or just the chunk's K/V as
  `kv_slice_k_i` / `kv_slice_v_i` (ONNX, see KVCache), and `logits` from `decode`.

K keeps the sequence on axis 2 and V on axis 3 (litert-torch export_hf's default layout, which
the engine's executor metadata describes as `sequence_axis`). The new entries are written at
`input_pos[0]` onwards (modulo a ring's length): a chunk is always contiguous.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from edgepack import contract
from edgepack.converters import onnx_contrib
from edgepack.contract import MASK_VALUE


class TiedEmbedding(nn.Embedding):
    """The token embedding, whose weight is also the LM head (Gemma ties them). A quantized
    replacement (converters/onnx_quant.py) keeps one stored table for both uses."""

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.weight.T


def onnx_rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) in the form onnxruntime fuses into one SimplifiedLayerNormalization: a division
    by the square root (it leaves `x * rsqrt(...)` as six ops; the 270M's graph: 1,827 -> 1,173
    nodes, decode ~5% faster). TFLite keeps transformers' own form."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """Gemma 3n's norm: `x / rms(x) * weight` (no weight for the value norm)."""

    def __init__(self, dim: int, eps: float = 1e-6, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            x = onnx_rms_normalize(x, self.eps)
        else:
            x = x * torch.pow(x.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)  # as transformers' Gemma 3n
        return x if self.weight is None else x * self.weight


class OffsetRMSNorm(nn.Module):
    """Gemma 3's norm: `x / rms(x) * (1 + weight)`; checkpoints store the offset form."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return onnx_rms_normalize(x, self.eps) * (1.0 + self.weight)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)  # as Gemma 3


def rope_inv_freq(head_dim: int, theta: float, factor: float = 1.0) -> torch.Tensor:
    """Default RoPE inverse frequencies; `factor` is transformers' "linear" scaling. Computed as
    transformers does (float32 arange, float exponent); from numpy so that a model built on the
    meta device (planner.plan_export) still gets real values."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv = torch.from_numpy(exponent.astype(np.float32))
    return (1.0 / (theta ** inv)) / factor


def rope_cos_sin(input_pos: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [T, D] for the given positions, computed in the graph exactly as transformers does."""
    freqs = input_pos.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [1, T, H, D]; rotate-half convention of transformers' Gemma models. ONNX graphs take
    onnxruntime's fused RotaryEmbedding, one node where the spelled-out form is six (270M int8
    graph: 1,173 -> 1,065 nodes after onnxruntime's optimizer, decode 3-5% faster)."""
    half = x.shape[-1] // 2
    if torch.onnx.is_in_onnx_export():
        _, t, h, d = x.shape
        return onnx_contrib.rotary(x.reshape(1, t, h * d), cos[:, :half], sin[:, :half], h).reshape(1, t, h, d)
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


def sliding_mask(mask: torch.Tensor, input_pos: torch.Tensor, window: int) -> torch.Tensor:
    """Adds the sliding-window limit to the global causal mask: key k is visible from query q
    only when q - k < window (transformers' `sliding_window_overlay`)."""
    cache_len = mask.shape[-1]
    k_pos = torch.arange(cache_len, dtype=torch.int32)[None, :]
    too_old = k_pos <= (input_pos[:, None] - window)
    return mask + torch.where(too_old, MASK_VALUE, 0.0)[None, None]


def ring_mask(input_pos: torch.Tensor, ring: int, window: int, written_to: torch.Tensor) -> torch.Tensor:
    """[1, 1, T, ring] additive mask over a ring cache that holds positions up to `written_to` - 1.

    Slot s holds the latest position p < written_to with p % ring == s; query q sees it when
    0 <= p <= q and q - p < window. Slots the current call padded past the prompt hold later
    positions that this reads as older ones (p - ring), out of every window, until decode
    overwrites them.
    """
    last = written_to - 1
    held = last - torch.remainder(last - torch.arange(ring, dtype=torch.int32)[None, :], ring)
    q = input_pos[:, None]
    visible = (held >= 0) & (held <= q) & (q - held < window)
    return torch.where(visible, 0.0, MASK_VALUE)[None, None]


@dataclasses.dataclass
class LayerKV:
    """What one attention layer reads: the cache, plus (ONNX) the chunk's own K/V kept apart."""

    k: torch.Tensor  # [1, KVH, C, D]
    v: torch.Tensor  # [1, KVH, D, C]
    k_new: torch.Tensor | None = None  # [1, KVH, T, D]
    v_new: torch.Tensor | None = None  # [1, KVH, D, T]


@dataclasses.dataclass
class LayerMask:
    cache: torch.Tensor  # [1, 1, T, C] additive, over the cache slots
    chunk: torch.Tensor | None = None  # [1, 1, T, T] additive, over the chunk's own keys (ONNX)
    ring: int | None = None  # slots of a ring cache (contract.cache_lengths), None for a linear one
    window: int | None = None  # a sliding layer's window (group_query: the kernel masks by itself)


def cache_lengths(cfg, kv_cache: dict[str, torch.Tensor]) -> dict[str, int]:
    """Each layer kind's cache length, read off the cache inputs (`k_<layer>` [1, KVH, L, D])."""
    return {cfg.layer_types[i]: kv_cache[f"k_{i}"].shape[2] for i in cfg.cache_layers}


class KVCache:
    """How a graph updates its KV cache; the two backends differ.

    TFLite (LiteRT-LM's contract): the chunk's K/V are written into the cache with
    `tfl.dynamic_update_slice` and the updated caches are outputs, which LiteRT's engines bind to
    the same buffers as the inputs.
    ONNX: onnxruntime has no in-place update, so writing into the cache would copy every cache
    tensor each token. Instead the graph reads the cache as it is (slots from input_pos[0] on are
    stale and masked), attends to the chunk's own K/V separately in one softmax, and outputs just
    the chunk's K/V (`kv_slice_*`); the runtime writes them into its cache arrays in place.

    Sliding-window layers may keep a ring (position p in slot p % ring, contract.cache_lengths);
    the graph learns it from the cache inputs' shapes. TFLite writes a decode token with one
    dynamic_update_slice at input_pos[0] % ring and a prefill chunk, which may wrap, with a gather
    and a select over the ring; ONNX graphs only read the ring, and the runtime writes it.

    group_query (ONNX, plan.Graph.group_query): onnxruntime's GroupQueryAttention reads the cache
    up to the chunk, writes the chunk into it and masks by itself (causal, and a sliding layer's
    window); its updated caches are the `present_*` outputs, which the runtime binds to the very
    buffers it passed in, so nothing is copied. A sliding layer shorter than the context keeps the
    kernel's windowed cache (contract.window_rows) instead of a ring.
    """

    def __init__(self, backend: str):
        if backend not in ("tflite", "onnx", "group_query"):
            raise ValueError(f"unknown cache backend {backend!r}")
        self.backend = backend

    def masks(self, mask, input_pos, sliding_window: int, lengths: dict[str, int]) -> dict[str, LayerMask]:
        """`lengths`: the cache length of each layer kind (the cache inputs' sequence axis)."""
        context, t = mask.shape[-1], input_pos.shape[0]
        ring = lengths.get("sliding_attention", context)
        ring = ring if ring < context else None
        if self.backend == "group_query":
            return {"full_attention": LayerMask(mask),
                    "sliding_attention": LayerMask(mask, ring=ring, window=sliding_window)}
        if ring is None:
            local = sliding_mask(mask, input_pos, sliding_window)
        else:  # TFLite attends over the ring after writing the chunk, ONNX before
            written_to = input_pos[0] + (t if self.backend == "tflite" else 0)
            local = ring_mask(input_pos, ring, sliding_window, written_to)
        if self.backend == "tflite":
            return {"full_attention": LayerMask(mask), "sliding_attention": LayerMask(local, ring=ring)}
        k_pos = torch.arange(context, dtype=torch.int32)[None, :]
        stale = torch.where(k_pos >= input_pos[0], MASK_VALUE, 0.0)[None, None]
        ago = input_pos[:, None] - input_pos[None, :]  # query pos - key pos, within the chunk
        chunk = torch.where(ago >= 0, 0.0, MASK_VALUE)[None, None]
        chunk_local = torch.where((ago >= 0) & (ago < sliding_window), 0.0, MASK_VALUE)[None, None]
        return {"full_attention": LayerMask(mask + stale, chunk),
                "sliding_attention": LayerMask(local if ring else local + stale, chunk_local, ring)}

    def write(self, k_cache, v_cache, k_new, v_new, input_pos, ring: int | None = None) -> LayerKV:
        # k_new [1, KVH, T, D] -> K cache [1, KVH, C, D]; v_new [1, KVH, D, T] -> V cache [1, KVH, D, C]
        if self.backend == "onnx":
            return LayerKV(k_cache, v_cache, k_new, v_new)
        from litert_torch.generative.custom_ops.dynamic_update_slice import dynamic_update_slice

        t = k_new.shape[2]
        if ring is not None and t > 1:  # a chunk may wrap: slot s takes chunk entry (s - start) % ring
            ahead = torch.remainder(torch.arange(ring, dtype=torch.int32) - input_pos[0], ring)
            fresh = ahead < t
            pick = torch.clamp(ahead, max=t - 1)
            return LayerKV(torch.where(fresh[None, None, :, None], k_new.index_select(2, pick), k_cache),
                           torch.where(fresh[None, None, None, :], v_new.index_select(3, pick), v_cache))
        zero = torch.zeros((), dtype=torch.int32)
        start = input_pos[0] if ring is None else torch.remainder(input_pos[0], ring)
        return LayerKV(dynamic_update_slice(k_cache, k_new, [zero, zero, start, zero]),
                       dynamic_update_slice(v_cache, v_new, [zero, zero, zero, start]))

    def outputs(self, i: int, kv: LayerKV) -> dict[str, torch.Tensor]:
        """The graph outputs for cache layer i."""
        k, v = contract.k_cache_name(i), contract.v_cache_name(i)
        if self.backend == "onnx":
            return {contract.kv_slice_name(k): kv.k_new, contract.kv_slice_name(v): kv.v_new}
        if self.backend == "group_query":
            return {contract.present_name(k): kv.k, contract.present_name(v): kv.v}
        return {k: kv.k, v: kv.v}

    def group_query_attend(self, q, k, v, kv: LayerKV, input_pos, mask: LayerMask, scaling: float, cos, sin):
        """group_query: q [1, T, H, D] and the chunk's k [1, T, KVH, D], normed, not rotated, and v
        [1, T, KVH*D], over the cache (K and V [1, KVH, L, D]); cos/sin [C, D] of every position (the
        kernel rotates q and k itself). Returns the attention [1, T, H*D] and the updated cache."""
        _, t, h, d = q.shape
        kvh = k.shape[2]
        half = d // 2
        # positions are contiguous: the chunk ends at input_pos[-1], and the kernel counts from it
        out, k_cache, v_cache = onnx_contrib.group_query_attention(
            q.reshape(1, t, h * d), k.reshape(1, t, kvh * d), v, kv.k, kv.v,
            input_pos[-1:], input_pos[-1] + 1, cos[:, :half], sin[:, :half], h, kvh, scaling, mask.window or -1,
            mask.ring is not None)
        return out, LayerKV(k_cache, v_cache)


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.transpose(2, 3) for [1, KVH, ., .] tensors. For TFLite it is litert-torch's bmm_4d,
    one BATCH_MATMUL that reads b as it is stored (adj_y), as Google's export_hf writes attention:
    torch.matmul with the transpose lowers to a TRANSPOSE that copies the whole cache of every
    global layer on every call (8 MiB per tensor per step for full-size E2B), and that copy's
    scratch stays allocated."""
    if torch.onnx.is_in_onnx_export():
        return torch.matmul(a, b.transpose(2, 3))
    from litert_torch.generative.custom_ops.bmm_4d import bmm_4d

    return bmm_4d(a, b)


def attend(q: torch.Tensor, kv: LayerKV, mask: LayerMask, scaling: float):
    """Grouped-query attention of q [1, T, H, D] over the cache (and the chunk's own K/V when kept
    apart); returns [1, T, H*D].

    Query head h reads KV head h // (H / KVH), as transformers' `repeat_kv` does; grouping the
    query heads instead of repeating K/V keeps the cache read once. Both products contract the
    cache's last axis (K [.., S, D], V [.., D, S]): `matmul_nt`.
    """
    _, t, h, d = q.shape
    kvh = kv.k.shape[1]
    g = h // kvh
    q = q.transpose(1, 2).reshape(1, kvh, g * t, d)

    def scores(keys, m):  # keys [1, KVH, S, D] -> [1, KVH, G*T, S]
        s = matmul_nt(q, keys) * scaling
        return (s.reshape(1, kvh, g, t, -1) + m[:, :, None]).reshape(1, kvh, g * t, -1)

    s = scores(kv.k, mask.cache)
    if kv.k_new is None:
        out = matmul_nt(torch.softmax(s, dim=-1), kv.v)  # [1, KVH, G*T, D]
    else:
        c = s.shape[-1]
        probs = torch.softmax(torch.cat([s, scores(kv.k_new, mask.chunk)], dim=-1), dim=-1)
        out = matmul_nt(probs[..., :c], kv.v) + matmul_nt(probs[..., c:], kv.v_new)
    return out.reshape(1, h, t, d).transpose(1, 2).reshape(1, t, h * d)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap
