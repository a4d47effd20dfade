"""ONNX bundles on onnxruntime. A group-query graph (plan.Graph.group_query) updates the cache
itself: each cache buffer is bound as both its input and its `present_*` output, so onnxruntime's
GroupQueryAttention writes the chunk's K/V into it where it lies. Any other graph returns only the
K/V a call computed, and the engine writes them into its cache."""

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
        self.group_query = b.graph.group_query
        self._step = self._run_group_query if self.group_query else self._run
        super().__init__(b, stores)
        self.outputs = contract.onnx_outputs(self.cache_names, self.group_query)
        shapes = {o.name: o.shape for o in self.session.get_outputs()}
        missing = set(self.outputs) - set(shapes)
        if missing:  # a manifest that doesn't describe its graph (graph.group_query, cache_layers)
            raise EdgepackError(f"{b.path}: the ONNX graph has no output {sorted(missing)[0]!r} that its manifest's "
                                f"graph section implies")
        if shapes["logits"][-1] != self.vocab_size:  # [1, 1, vocab]: the engine's own array takes them
            raise EdgepackError(f"{b.path}: the graph gives {shapes['logits'][-1]} logits, the manifest's vocab_size "
                                f"is {self.vocab_size}")

    def _clear(self) -> None:
        super()._clear()
        if self.group_query:
            import onnxruntime as ort

            # OrtValues over the cache arrays' own memory: bound as present_* too, they are written in place
            self.bound = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in self.cache.items()}
            self.binding = self.session.io_binding()
            for name, value in self.bound.items():
                self.binding.bind_ortvalue_input(name, value)
                self.binding.bind_ortvalue_output(contract.present_name(name), value)

    def reusable(self, ids: list[int]) -> int:
        """A group-query graph's linear caches keep position p in row p, so any prefix is reusable.
        A windowed cache (contract.window_rows) is laid out by the token count alone; going back
        from T tokens to a prefix of n reads as a fresh run's only when no rows moved in between."""
        if not self.group_query:
            return super().reusable(ids)
        n, total = self._held_prefix(ids), len(self.held)  # no padding: held covers every position written
        window = self.bundle.plan.model.setting("sliding_window")
        for rows in set(self.bundle.cache_lengths) - {self.cache_len}:
            if type(window) is not int or not 1 <= window <= rows:
                return 0  # a manifest that doesn't say: start afresh
            if contract.window_rows(n, rows, window) != contract.window_rows(total, rows, window) - (total - n):
                return 0
        return n

    def _run_group_query(self, ids, positions) -> np.ndarray:
        import onnxruntime as ort

        io = self.binding
        for name, value in self._inputs(ids, positions).items():
            io.bind_cpu_input(name, value)  # replaces the last call's
        # logits [1, 1, vocab] (the last position's) straight into an array of ours: reading them
        # back through io.get_outputs() would wrap every present_* output too (0.2 ms a token)
        logits = np.empty((1, 1, self.vocab_size), np.float32)
        io.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        self.session.run_with_iobinding(io)
        return logits[0, -1]

    def _run(self, ids, positions) -> np.ndarray:
        # The graph reads the cache arrays without copying them and returns only the K/V it
        # computed; they are written into the cache here, in place.
        logits, *slices = self.session.run(self.outputs, self._inputs(ids, positions) | self.cache)
        for name, new in zip(self.cache_names, slices):
            copy_slots(self.cache[name], new, name, int(positions[0]), len(ids))
        return logits[0, -1]

    def _run_prefill(self, ids, positions) -> None:
        self._step(ids, positions)

    def _run_decode(self, ids, positions) -> np.ndarray:
        return self._step(ids, positions)
