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
# Prompt tokens per call of a graph with a dynamic length (ONNX): the prefill_<N> of TFLite's
# default. Full-size E2B: activations peak 0.3 GB lower than with 512-token chunks, prefill ~4%
# slower (docs/full-size.md).
DYNAMIC_PREFILL_CHUNK = 128
EMBEDDER_SIGNATURE = "embedder"
PER_LAYER_EMBEDDER_SIGNATURE = "per_layer_embedder"
# An ONNX Gemma 3n graph of a bundle with audio: the embeddings of multimodal tokens (audio soft
# tokens, <end_of_audio>), [1, T, hidden]; the graph reads row t where token t is multimodal.
MULTIMODAL_INPUT = "multimodal_embeddings"


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


def present_name(cache_name: str) -> str:
    """A group-query ONNX graph's updated cache (present_k_i for kv_cache_k_i): ONNX names a value
    once, so the output can't take the input's name; the runtime binds both to one buffer."""
    return cache_name.replace("kv_cache_", "present_", 1)


def onnx_outputs(cache_names: list[str], group_query: bool) -> list[str]:
    """An ONNX graph's outputs: `logits`, then per cache tensor its present_* (group-query graphs)
    or its kv_slice_*."""
    rename = present_name if group_query else kv_slice_name
    return ["logits"] + [rename(n) for n in cache_names]


def k_cache_shape(num_kv_heads: int, cache_len: int, head_dim: int) -> tuple[int, ...]:
    return (1, num_kv_heads, cache_len, head_dim)


def v_cache_shape(num_kv_heads: int, cache_len: int, head_dim: int, group_query: bool = False) -> tuple[int, ...]:
    """V keeps the sequence on its last axis, as LiteRT-LM's graphs do; onnxruntime's
    GroupQueryAttention wants it laid out as K."""
    return k_cache_shape(num_kv_heads, cache_len, head_dim) if group_query else (1, num_kv_heads, head_dim, cache_len)


def cache_names(cache_layers: list[int]) -> list[str]:
    """Every cache tensor of a graph, in signature order: kv_cache_k_i, kv_cache_v_i per layer."""
    return [name for i in cache_layers for name in (k_cache_name(i), v_cache_name(i))]


def cache_lengths(layer_types: list[str], cache_layers: list[int], window: int, context: int,
                  chunk: int) -> list[int]:
    """Slots each cache layer keeps, in cache_layers order.

    A full-attention layer keeps the whole context. A sliding-window layer only ever attends to
    the last `window` positions, so it keeps a ring: position p lives in slot p % length. A graph
    call writes up to `chunk` new K/V before its first query attends, and that query still needs
    the window - 1 positions before the chunk, so the ring is window + chunk - 1 slots: `chunk` is
    the prefill length for TFLite (its graphs attend over the updated cache) and 1 for ONNX (its
    graphs attend to the cache as it was and to a chunk's own K/V apart, blocks.KVCache); a
    group-query graph's windowed cache takes window_slack() + 1 (not a ring: window_rows()). When the
    context is no longer than that, the layer keeps the context as it is.
    """
    ring = window + chunk - 1
    return [ring if layer_types[i] == "sliding_attention" and ring < context else context for i in cache_layers]


def window_slack(window: int) -> int:
    """Rows a group-query graph's sliding-window cache keeps beyond its window. onnxruntime's
    windowed cache moves its rows to the front each time it fills, so `slack` + 1 tokens pass
    between moves of window - 1 rows: a quarter of the window keeps that to ~4 rows a token."""
    return max(1, window // 4)


def window_rows(total: int, capacity: int, window: int) -> int:
    """How many of the latest positions a group-query graph's sliding-window cache of `capacity`
    rows holds after `total` tokens (onnxruntime's `sliding_window_cache`: rows from 0 in position
    order, never wrapping; once full it drops capacity - window + 1 positions at once)."""
    if total <= capacity:
        return total
    drop = capacity - window + 1
    return total - drop * -(-(total - capacity) // drop)


def cache_shapes(cache_layers: list[int], num_kv_heads: int, lengths: list[int],
                 head_dim: int, group_query: bool = False) -> dict[str, tuple[int, ...]]:
    """cache_names() with their shapes; `lengths` as cache_lengths() gives them."""
    shapes = {}
    for i, n in zip(cache_layers, lengths, strict=True):
        shapes[k_cache_name(i)] = k_cache_shape(num_kv_heads, n, head_dim)
        shapes[v_cache_name(i)] = v_cache_shape(num_kv_heads, n, head_dim, group_query)
    return shapes


def cache_bytes(cache_layers: list[int], num_kv_heads: int, lengths: list[int], head_dim: int) -> int:
    """Bytes of every cache tensor (float32); the layout does not change them."""
    return sum(4 * math.prod(s) for s in cache_shapes(cache_layers, num_kv_heads, lengths, head_dim).values())


def ring_spans(start: int, n: int, length: int) -> list[tuple[int, int, int]]:
    """Where the K/V of positions start..start+n-1 go in a cache of `length` slots, as
    (slot, index in the chunk, count) runs. Position p lives in slot p % length; a chunk longer
    than the cache keeps its last `length` positions. For a cache as long as the context, this is
    one run at `start`."""
    skip = max(0, n - length)
    spans, j = [], skip
    while j < n:
        slot = (start + j) % length
        count = min(n - j, length - slot)
        spans.append((slot, j, count))
        j += count
    return spans


def causal_mask(input_pos: np.ndarray, cache_len: int) -> np.ndarray:
    """The `mask` input [1, 1, T, C]: query at position p sees cache slots 0..p."""
    k = np.arange(cache_len)[None, :]
    return np.where(k <= np.asarray(input_pos)[:, None], 0.0, MASK_VALUE).astype(np.float32)[None, None]
