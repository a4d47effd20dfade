"""One engine interface over both bundle formats: TFLite via ai-edge-litert, ONNX via onnxruntime.

An engine owns the KV cache and exposes two calls: `prefill(ids, start)` writes a prompt's K/V
into the cache, `decode(id, pos)` writes one token's and returns the next-token logits. Both feed
the graph contract in edgepack/contract.py.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from edgepack import contract
from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError
from edgepack.runtime import mapped_pages
from edgepack.runtime.row_store import RowStore, StoreOptions


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
        g = b.manifest["graph"]
        self.bundle = b
        self.cache_len = b.max_context
        self.vocab_size = int(g["vocab_size"])
        self.prefill_lengths = list(g["prefill_lengths"])
        self.inputs_kind = g["inputs"]  # "tokens" | "embeddings"
        self.cache_shapes = b.cache_shapes
        self.cache_names = list(self.cache_shapes)
        self.stores = {name: RowStore(b.path, spec, stores.advice,
                                      stores.cache_mb if name == "per_layer_embeddings" else 0.0)
                       for name, spec in b.manifest.get("row_stores", {}).items()}
        cfg = b.manifest["model"]["config"]
        self.ple_shape = (cfg.get("num_hidden_layers"), cfg.get("hidden_size_per_layer_input"))
        self.reset()

    def reset(self) -> None:
        self.cache = {n: np.zeros(s, np.float32) for n, s in self.cache_shapes.items()}

    def _inputs(self, ids: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
        t = len(ids)
        feeds = {"input_pos": positions.astype(np.int32), "mask": contract.causal_mask(positions, self.cache_len)}
        if self.inputs_kind == "embeddings":
            feeds["embeddings"] = self.stores["embeddings"].gather(ids)[None]
        else:
            feeds["tokens"] = ids.astype(np.int32)[None]
        if "per_layer_embeddings" in self.stores:
            rows = self.stores["per_layer_embeddings"].gather(ids)
            feeds["per_layer_embeddings"] = rows.reshape(1, t, *self.ple_shape)
        return feeds

    def prefill(self, ids: np.ndarray, start: int = 0) -> None:
        length = self.prefill_lengths[0] if self.prefill_lengths else None
        for s, n in plan_chunks(len(ids), length, self.cache_len):
            chunk = ids[s:s + n]
            size = length or n
            padded = np.zeros(size, np.int32)
            padded[:n] = chunk
            # Padding slots take the following positions: their K/V land beyond the prompt and are
            # overwritten by decode before any query can see them.
            self._run_prefill(padded, np.arange(start + s, start + s + size, dtype=np.int32))
        release_freed_heap()  # the chunks' inputs and the engine's scratch: ~15 MiB on E2B

    def decode(self, token: int, pos: int) -> np.ndarray:
        return self._run_decode(np.array([token], np.int32), np.array([pos], np.int32))

    def _run_prefill(self, ids: np.ndarray, positions: np.ndarray) -> None:
        raise NotImplementedError

    def _run_decode(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def release_freed_heap() -> None:
    """Hands glibc's freed heap back to the kernel (a no-op elsewhere): what a process frees
    stays in its resident set until then."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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


def default_threads() -> int:
    """The cores this process may use (a Pi 4 has 4; containers may allow fewer)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class OnnxEngine(Engine):
    def __init__(self, b: Bundle, threads: int | None = None, stores: StoreOptions = StoreOptions()):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.log_severity_level = 3
        # Without onnxruntime's arena, a prefill chunk's activations go back to the system after
        # the call instead of staying reserved for the whole run (E2B, a 512-token chunk: 540 MiB
        # less while decoding; prefill and decode speed the same, docs/full-size.md).
        opts.enable_cpu_mem_arena = False
        graph = b.file(b.manifest["graph"]["file"])
        weights = graph.with_name(graph.name + ".data")
        # onnxruntime repacks each MatMulNBits weight into its own heap copy; the mapped pages it
        # reads them from would stay resident though nothing reads them again (mapped_pages.py).
        try:
            with mapped_pages.paged_out_while(weights):
                self.session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise EdgepackError(f"onnxruntime cannot load {b.path}: {e}") from None
        mapped_pages.drop(weights)
        super().__init__(b, stores)
        self.outputs = ["logits"] + [contract.kv_slice_name(n) for n in self.cache_names]

    def _run(self, ids, positions) -> np.ndarray:
        # The graph reads the cache arrays without copying them and returns only the K/V it
        # computed; they are written into the cache here, in place.
        logits, *slices = self.session.run(self.outputs, self._inputs(ids, positions) | self.cache)
        for name, new in zip(self.cache_names, slices):
            copy_slots(self.cache[name], new, name, int(positions[0]), len(ids))
        return logits[0, -1]

    def _run_prefill(self, ids, positions) -> None:
        self._run(ids, positions)

    def _run_decode(self, ids, positions) -> np.ndarray:
        return self._run(ids, positions)


def open_engine(b: Bundle, threads: int | None = None, stores: StoreOptions = StoreOptions()) -> Engine:
    if threads is not None and threads < 1:
        raise EdgepackError(f"--threads must be >= 1, got {threads}")
    if b.format == "onnx":
        return OnnxEngine(b, threads, stores)
    from edgepack.runtime.litert_engine import litert_engine

    return litert_engine(b, threads, stores)
