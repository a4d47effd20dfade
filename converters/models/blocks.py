"""Building blocks shared by the Gemma graph builders: norms, RoPE, masks, KV cache, attention.

Every graph edgepack exports follows one contract, the one LiteRT-LM's engine drives:

- inputs  `input_pos` [T] int32, `mask` [1, 1, T, C] float32 (additive: 0 or MASK_VALUE, the
  global causal mask), `kv_cache_k_i` [1, KVH, C, D], `kv_cache_v_i` [1, KVH, D, C];
- outputs the updated caches under the same names, and `logits` from `decode`.

K keeps the sequence on axis 2 and V on axis 3 (litert-torch export_hf's default layout, which
the engine's executor metadata describes as `sequence_axis`). The new entries are written at
`input_pos[0]` onwards: a chunk is always contiguous.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgepack.contract import MASK_VALUE


class TiedEmbedding(nn.Embedding):
    """The token embedding, whose weight is also the LM head (Gemma ties them). A quantized
    replacement (converters/onnx_quant.py) keeps one stored table for both uses."""

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.weight.T


class RMSNorm(nn.Module):
    """Gemma 3n's norm: `x / rms(x) * weight` (no weight for the value norm)."""

    def __init__(self, dim: int, eps: float = 1e-6, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.pow(x.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)
        return x if self.weight is None else x * self.weight


class OffsetRMSNorm(nn.Module):
    """Gemma 3's norm: `x / rms(x) * (1 + weight)`; checkpoints store the offset form."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)


def rope_inv_freq(head_dim: int, theta: float, factor: float = 1.0) -> torch.Tensor:
    """Default RoPE inverse frequencies; `factor` is transformers' "linear" scaling."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    return inv / factor


def rope_cos_sin(input_pos: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [T, D] for the given positions, computed in the graph exactly as transformers does."""
    freqs = input_pos.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [1, T, H, D]; rotate-half convention of transformers' Gemma models."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


def sliding_mask(mask: torch.Tensor, input_pos: torch.Tensor, window: int) -> torch.Tensor:
    """Adds the sliding-window limit to the global causal mask: key k is visible from query q
    only when q - k < window (transformers' `sliding_window_overlay`)."""
    cache_len = mask.shape[-1]
    k_pos = torch.arange(cache_len, dtype=torch.int32)[None, :]
    too_old = k_pos <= (input_pos[:, None] - window)
    return mask + torch.where(too_old, MASK_VALUE, 0.0)[None, None]


class KVCacheWriter:
    """Writes a chunk of K/V into the caches at `input_pos[0]`.

    TFLite: `tfl.dynamic_update_slice`, which the LiteRT CPU kernels can run in place.
    ONNX: `index_copy` on the chunk's positions (ScatterND); onnxruntime has no DUS.
    """

    def __init__(self, backend: str):
        if backend not in ("tflite", "onnx"):
            raise ValueError(f"unknown cache backend {backend!r}")
        self.backend = backend

    def __call__(self, k_cache, v_cache, k_new, v_new, input_pos):
        # k_new [1, KVH, T, D] -> K cache [1, KVH, C, D]; v_new [1, KVH, D, T] -> V cache [1, KVH, D, C]
        if self.backend == "tflite":
            from litert_torch.generative.custom_ops.dynamic_update_slice import dynamic_update_slice

            zero = torch.zeros((), dtype=torch.int32)
            start = input_pos[0]
            k = dynamic_update_slice(k_cache, k_new, [zero, zero, start, zero])
            v = dynamic_update_slice(v_cache, v_new, [zero, zero, zero, start])
            return k, v
        idx = input_pos.to(torch.int64)
        return k_cache.index_copy(2, idx, k_new), v_cache.index_copy(3, idx, v_new)


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor, scaling: float):
    """Grouped-query attention of q [1, T, H, D] over the whole cache; returns [1, T, H*D].

    Query head h reads KV head h // (H / KVH), as transformers' `repeat_kv` does; grouping the
    query heads instead of repeating K/V keeps the cache read once.
    """
    _, t, h, d = q.shape
    kvh = k_cache.shape[1]
    g = h // kvh
    q = q.transpose(1, 2).reshape(1, kvh, g * t, d)
    scores = torch.matmul(q, k_cache.transpose(2, 3)) * scaling  # [1, KVH, G*T, C]
    scores = scores.reshape(1, kvh, g, t, -1) + mask[:, :, None]
    probs = torch.softmax(scores, dim=-1).reshape(1, kvh, g * t, -1)
    out = torch.matmul(probs, v_cache.transpose(2, 3))  # [1, KVH, G*T, D]
    return out.reshape(1, h, t, d).transpose(1, 2).reshape(1, t, h * d)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap
