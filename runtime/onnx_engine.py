"""ONNX bundles on onnxruntime: the graph returns only the K/V a call computed, and the engine
writes them into its cache in place."""

from __future__ import annotations

import numpy as np

from edgepack import contract
from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError
from edgepack.runtime import mapped_pages
from edgepack.runtime.engine import Engine, copy_slots
from edgepack.runtime.row_store import StoreOptions
from edgepack.system import default_threads


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
        graph = b.file(b.graph.file)
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
