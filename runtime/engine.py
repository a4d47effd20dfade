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

        # A bundle with audio: the embeddings of multimodal tokens go to an ONNX graph as an input of
        # their own (contract.py), in a .litertlm's embeddings in place of the looked-up rows
        self.audio = b.plan.audio
        self.soft: dict[int, np.ndarray] = {}  # position -> audio soft token embedding, for the next prefill

        # The shortest cache: a sliding layer's ring (or window cache), or the context.
        self.ring = min(g.cache_lengths)
        self.reset()
        if self.warms_up:
            self._warm_up()
            self.reset()

    # A LiteRT graph's first run after a load is slower than the runs after it (270M int4, 2
    # threads: the first prefill_128 call 108-154 ms, the next ones 82-86 ms; pre-faulting the
    # mapped packed weights does not change it: docs/benchmarks.md). Engines that pay it run each
    # graph once at load, so the first prompt's time to first token doesn't.
    warms_up = False

    def _warm_up(self) -> None:
        """One prefill call and one decode step on padding tokens; the caller clears the cache."""
        length = self.prefill_length or 1
        self._run_prefill(np.zeros(length, np.int32), np.arange(length, dtype=np.int32))
        self._run_decode(np.zeros(1, np.int32), np.array([length % self.cache_len], np.int32))

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
        n = self._held_prefix(ids)
        slack = (self.prefill_length or 1) - 1  # ring - window: the chunk a call writes, less one
        return n if self.written <= self.ring or n >= self.written - 1 - slack else 0

    def _held_prefix(self, ids: list[int]) -> int:
        """How many of a prompt's first tokens (all but its last) are the held tokens."""
        n = 0
        for a, b in zip(self.held, ids[:-1]):
            if a != b:
                break
            n += 1
        return n

    def _inputs(self, ids: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
        t = len(ids)
        feeds = {"input_pos": positions.astype(np.int32), "mask": contract.causal_mask(positions, self.cache_len)}
        if self.inputs_kind == "embeddings":
            rows = self.stores["embeddings"].gather(ids)
            if self.audio is not None and (multimodal := ids >= self.audio.multimodal_offset).any():
                rows = np.where(multimodal[:, None], self._multimodal(ids, positions), rows)
            feeds["embeddings"] = rows[None]
        else:
            feeds["tokens"] = ids.astype(np.int32)[None]
            if self.audio is not None:
                feeds[contract.MULTIMODAL_INPUT] = self._multimodal(ids, positions)[None]
        if "per_layer_embeddings" in self.stores:
            rows = self.stores["per_layer_embeddings"].gather(ids)
            feeds["per_layer_embeddings"] = rows.reshape(1, t, self.bundle.plan.model.setting("num_hidden_layers"), -1)
        return feeds

    def _multimodal(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """[T, hidden]: row t for a multimodal token (zeros for the others, which the graph does not
        read): an audio soft token's embedding, or the id's row of the multimodal vocabularies
        (embed_vision's and embed_audio's; an id with no row, of an older bundle, reads zeros)."""
        a = self.audio
        out = np.zeros((len(ids), self.bundle.plan.model.setting("hidden_size")), np.float32)
        vocab = self.stores[a.vocab_store]
        for t in np.flatnonzero(ids >= a.multimodal_offset):
            pos, i = int(positions[t]), int(ids[t])
            if pos in self.soft:
                out[t] = self.soft[pos]
            elif a.vocab_offset <= i < a.vocab_offset + vocab.rows:
                out[t] = vocab.gather(np.array([i - a.vocab_offset]))[0]
        return out

    def prefill(self, ids: np.ndarray, start: int = 0, soft: dict[int, np.ndarray] | None = None) -> None:
        """`soft`: audio soft token embeddings by position (prompt positions of the audio soft tokens)."""
        self.soft = soft or {}
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
        # an audio soft token's K/V depends on its clip, not only its id: never reused
        self.held = self.held[:start] + [-1 if start + j in self.soft else int(i) for j, i in enumerate(ids)]
        self.soft = {}
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
