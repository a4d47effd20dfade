"""The engine interface both bundle formats run behind (TFLite via ai-edge-litert: litert_engine.py;
ONNX via onnxruntime: onnx_engine.py).

An engine owns the KV cache and exposes two calls: `prefill(ids, start)` writes a prompt's K/V
into the cache, `decode(id, pos)` writes one token's and returns the next-token logits. Both feed
the graph contract in edgepack/contract.py.
"""

from __future__ import annotations

import numpy as np

from edgepack import contract
from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError
from edgepack.runtime.row_store import RowStore, StoreOptions
from edgepack.system import release_freed_heap


def plan_chunks(n: int, length: int | None, cache_len: int) -> list[tuple[int, int]]:
    """(start, real_tokens) chunks covering positions 0..n-1 with chunks of `length`.

    Fixed-length graphs (TFLite): when n isn't a multiple, the last chunk is moved back to end at
    n, recomputing a few positions (same tokens, same positions, same K/V) instead of padding past
    the end; only a prompt shorter than one chunk is padded. Dynamic graphs (ONNX): `length` is
    None and chunks are contract.DYNAMIC_PREFILL_CHUNK tokens (or the cache, when shorter).
    """
    if n == 0:
        return []
    if length is None:
        step = min(cache_len, contract.DYNAMIC_PREFILL_CHUNK)
        return [(s, min(step, n - s)) for s in range(0, n, step)]
    if n <= length:
        return [(0, n)]
    starts = list(range(0, n - length + 1, length))
    if starts[-1] + length < n:
        starts.append(n - length)
    return [(s, length) for s in starts]


class Engine:
    """Shared cache bookkeeping and input preparation; subclasses run the graph."""

    def __init__(self, b: Bundle, stores: StoreOptions = StoreOptions()):
        g = b.graph
        self.bundle = b
        self.cache_len = b.max_context
        self.vocab_size = g.vocab_size
        self.prefill_length = g.prefill_length  # None: the graph takes any length (ONNX)
        self.inputs_kind = g.inputs  # "tokens" | "embeddings"
        self.cache_shapes = g.cache_shapes
        self.cache_names = list(self.cache_shapes)
        self.stores = {name: RowStore(b.file(spec.file), spec, stores.advice,
                                      stores.cache_mb if name == "per_layer_embeddings" else 0.0)
                       for name, spec in b.plan.row_stores.items()}

        # The smallest cache along its sequence axis: a sliding layer's ring, or the context.
        self.ring = min(shape[2 if name.startswith("kv_cache_k_") else 3] for name, shape in self.cache_shapes.items())
        self.reset()

    def reset(self) -> None:
        """An empty cache."""
        self._clear()
        self.held: list[int] = []  # the token ids whose K/V sit at positions 0, 1, ... of the cache
        self.written = 0  # one past the highest position written since the reset (padding included)

    def _clear(self) -> None:
        self.cache = {n: np.zeros(s, np.float32) for n, s in self.cache_shapes.items()}

    def reusable(self, ids: list[int]) -> int:
        """How many of a prompt's first tokens already have their K/V in the cache, so a run can
        prefill from there (a chat's next turn): the held tokens up to where they and the prompt
        part, when the cache then reads as a fresh run's would. Positions the last run wrote past
        that point are stale. A full-attention layer never reads them (they lie in its future); a
        sliding layer's ring (position p in slot p % ring, contract.cache_lengths) reads a stale
        p as p - ring once it has wrapped, and that position is still in a query's window unless p
        is at most (ring - window) past the parting point. Otherwise nothing is reused."""
        n = 0
        for a, b in zip(self.held, ids[:-1]):
            if a != b:
                break
            n += 1
        slack = (self.prefill_length or 1) - 1  # ring - window: the chunk a call writes, less one
        return n if self.written <= self.ring or n >= self.written - 1 - slack else 0

    def _inputs(self, ids: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
        t = len(ids)
        feeds = {"input_pos": positions.astype(np.int32), "mask": contract.causal_mask(positions, self.cache_len)}
        if self.inputs_kind == "embeddings":
            feeds["embeddings"] = self.stores["embeddings"].gather(ids)[None]
        else:
            feeds["tokens"] = ids.astype(np.int32)[None]
        if "per_layer_embeddings" in self.stores:
            rows = self.stores["per_layer_embeddings"].gather(ids)
            feeds["per_layer_embeddings"] = rows.reshape(1, t, self.bundle.plan.model.setting("num_hidden_layers"), -1)
        return feeds

    def prefill(self, ids: np.ndarray, start: int = 0) -> None:
        length = self.prefill_length
        for s, n in plan_chunks(len(ids), length, self.cache_len):
            chunk = ids[s:s + n]
            size = length or n
            padded = np.zeros(size, np.int32)
            padded[:n] = chunk
            # Padding slots take the following positions: their K/V land beyond the prompt and are
            # overwritten by decode before any query can see them.
            self._run_prefill(padded, np.arange(start + s, start + s + size, dtype=np.int32))
            self.written = max(self.written, start + s + size)
        self.held = self.held[:start] + [int(i) for i in ids]
        release_freed_heap()  # the chunks' inputs and the engine's scratch: ~15 MiB on E2B

    def decode(self, token: int, pos: int) -> np.ndarray:
        logits = self._run_decode(np.array([token], np.int32), np.array([pos], np.int32))
        self.held = self.held[:pos] + [int(token)]
        self.written = max(self.written, pos + 1)
        if logits.shape != (self.vocab_size,):
            raise EdgepackError(f"{self.bundle.path}: the graph gives {logits.shape[-1]} logits, the manifest's "
                                f"vocab_size is {self.vocab_size}")
        return logits

    def _run_prefill(self, ids: np.ndarray, positions: np.ndarray) -> None:
        raise NotImplementedError

    def _run_decode(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def copy_slots(cache: np.ndarray, src: np.ndarray, name: str, start: int, n: int, src_is_cache: bool = False) -> None:
    """Writes the K/V of positions start..start+n-1 into `cache` (kv_cache_k_* keep the sequence on
    axis 2, kv_cache_v_* on axis 3), where a ring keeps them (contract.ring_spans). `src` holds
    them as a chunk [.., n, ..], or with `src_is_cache` at the same slots of a cache-shaped array."""
    axis = 2 if name.startswith("kv_cache_k_") else 3
    for slot, j, count in contract.ring_spans(start, n, cache.shape[axis]):
        at = slot if src_is_cache else j
        if axis == 2:
            cache[:, :, slot:slot + count] = src[:, :, at:at + count]
        else:
            cache[..., slot:slot + count] = src[..., at:at + count]
