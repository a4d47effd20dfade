"""The graph contract shared by the converters (which build graphs) and the runtime (which feeds
them). It is LiteRT-LM's: the same names and layouts serve its engine, ours, and onnxruntime.
"""

from __future__ import annotations

import math

import numpy as np

# Finite on purpose: a fully masked row (a padded prefill slot) must give a uniform softmax, not
# NaN, or the NaN lands in the cache and poisons later steps through 0 * NaN.
MASK_VALUE = -1e30

DECODE = "decode"
EMBEDDER_SIGNATURE = "embedder"
PER_LAYER_EMBEDDER_SIGNATURE = "per_layer_embedder"


def prefill_signature(length: int) -> str:
    return f"prefill_{length}"


def k_cache_name(i: int) -> str:
    return f"kv_cache_k_{i}"


def v_cache_name(i: int) -> str:
    return f"kv_cache_v_{i}"


def kv_slice_name(cache_name: str) -> str:
    """ONNX graphs output only the K/V a call computed (kv_slice_k_i for kv_cache_k_i); the runtime
    writes them into its cache at input_pos[0]."""
    return cache_name.replace("kv_cache_", "kv_slice_", 1)


def k_cache_shape(num_kv_heads: int, cache_len: int, head_dim: int) -> tuple[int, ...]:
    return (1, num_kv_heads, cache_len, head_dim)


def v_cache_shape(num_kv_heads: int, cache_len: int, head_dim: int) -> tuple[int, ...]:
    return (1, num_kv_heads, head_dim, cache_len)


def cache_names(cache_layers: list[int]) -> list[str]:
    """Every cache tensor of a graph, in signature order: kv_cache_k_i, kv_cache_v_i per layer."""
    return [name for i in cache_layers for name in (k_cache_name(i), v_cache_name(i))]


def cache_shapes(cache_layers: list[int], num_kv_heads: int, cache_len: int,
                 head_dim: int) -> dict[str, tuple[int, ...]]:
    """cache_names() with their shapes."""
    k = k_cache_shape(num_kv_heads, cache_len, head_dim)
    v = v_cache_shape(num_kv_heads, cache_len, head_dim)
    return {name: (k if name.startswith("kv_cache_k_") else v) for name in cache_names(cache_layers)}


def cache_bytes(cache_layers: list[int], num_kv_heads: int, cache_len: int, head_dim: int) -> int:
    """Bytes of every cache tensor (float32)."""
    return sum(4 * math.prod(s) for s in cache_shapes(cache_layers, num_kv_heads, cache_len, head_dim).values())


def causal_mask(input_pos: np.ndarray, cache_len: int) -> np.ndarray:
    """The `mask` input [1, 1, T, C]: query at position p sees cache slots 0..p."""
    k = np.arange(cache_len)[None, :]
    return np.where(k <= np.asarray(input_pos)[:, None], 0.0, MASK_VALUE).astype(np.float32)[None, None]
