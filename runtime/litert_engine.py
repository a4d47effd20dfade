"""`.litertlm` bundles on ai-edge-litert, through one of its two APIs.

- CompiledModel (the default): one TensorBuffer per cache tensor, bound as both the input and the
  output of every signature, so the graph's dynamic_update_slice writes the new K/V in place, as
  LiteRT-LM's CPU executor does. No step copies the cache. The model is mapped from a cached copy
  of the section with XNNPACK's packed weights beside it (litert_cache.py), not held in memory.
- Interpreter: for cores without the Armv8.1 LSE atomics (the Raspberry Pi 4's Cortex-A72, older
  phones). Creating a CompiledModel environment executes LSE instructions there and dies with
  SIGILL, the same crash as Google's prebuilt LiteRT-LM CLI on a Pi 4. The interpreter path keeps
  the cache in its own input tensors and copies back only the slots a call wrote.

`EDGEPACK_LITERT_API=compiled|interpreter` overrides the choice (edgepack/system.py; tests run both
on the host).
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import types
import weakref
from pathlib import Path

import numpy as np

from edgepack import contract
from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError
from edgepack.plan import MAIN_SECTION
from edgepack.runtime import litert_cache, mapped_pages
from edgepack.runtime.engine import Engine, copy_slots
from edgepack.runtime.row_store import StoreOptions
from edgepack.system import default_threads, litert_api, native_stderr_silenced
from edgepack.tflite_table import lookup_table

def litert_engine(b: Bundle, threads: int | None = None, stores: StoreOptions = StoreOptions()) -> Engine:
    check_row_stores(b)
    return (CompiledModelEngine if litert_api() == "compiled" else InterpreterEngine)(b, threads, stores)


def check_row_stores(b: Bundle) -> None:
    """A row store inside the .litertlm must be exactly the table of the embedder model in the
    section it lies in (offset, shape, dtype, scales), as LiteRT-LM would read it: the manifest's
    word is checked against the model's own, so a store shifted inside the file, which its
    checksums and the layout checks both let through, is refused instead of reading wrong rows.
    Reads the sections' flatbuffer tables only, through a memory map."""
    stores = {name: s for name, s in b.plan.row_stores.items() if s.file == b.graph.file}
    if not stores:
        return
    path = b.file(b.graph.file)
    with open(path, "rb") as f:
        mapped = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    for name, store in stores.items():
        sec = next((s for s in b.graph.sections or [] if s.offset <= store.offset < s.offset + s.size), None)
        where = None
        if sec is not None and sec.model_type != MAIN_SECTION:
            with contextlib.suppress(Exception):  # a flatbuffer that isn't one: the mismatch below says so
                where = lookup_table(mapped[sec.offset:sec.offset + sec.size])
        if where is None or store.offset != sec.offset + where["offset"] or store.shape != where["shape"] or (
                store.dtype, store.block) != (where["dtype"], where.get("block")) or store.scales_offset != (
                sec.offset + where["scales_offset"] if "scales_offset" in where else None):
            raise EdgepackError(f"{b.path}: row store {name} is not where the embedder model in "
                                f"{path.name} keeps its table (manifest offset {store.offset})")


def _main_section(b: Bundle) -> tuple[Path, bytes]:
    """The prefill/decode TFLite model read out of the .litertlm into memory, for the Interpreter
    (which takes a model as bytes or a file of its own) and a CompiledModel without a cache."""
    return b.file(b.graph.file), b.read_section(b.main_section)


def _load_compiled_model(rt: types.SimpleNamespace, b: Bundle, files: litert_cache.MainModelFiles | None,
                         threads: int | None) -> None:
    """rt.model: a CompiledModel of the main section, mapped from its cached file with XNNPACK's
    packed weights beside it, or (without a cache) from bytes kept alive in rt.section."""
    from ai_edge_litert import options
    from ai_edge_litert.compiled_model import CompiledModel

    cpu = options.Options(cpu_options=options.CpuOptions(
        num_threads=threads or default_threads(), xnnpack_flags=litert_cache.XNNPACK_FLAGS,
        xnnpack_weight_cache_path=str(files.packed_weights) if files else ""))
    path = b.file(b.graph.file)
    try:
        if files is None:
            rt.section = _main_section(b)[1]  # LiteRT may read it in place: it lives as long as the model
            rt.model = CompiledModel.from_buffer(rt.section, options=cpu)
        else:
            rt.model = CompiledModel.from_file(str(files.model), options=cpu)
    except Exception as e:
        raise EdgepackError(f"LiteRT cannot load {path}: {e}") from None


class CompiledModelEngine(Engine):
    """LiteRT's CompiledModel API with the cache buffers updated in place (see the module doc)."""

    api = "compiled"
    warms_up = True

    def __init__(self, b: Bundle, threads: int | None = None, stores: StoreOptions = StoreOptions()):
        g = b.graph
        self.prefill_sig, self.decode_sig = contract.prefill_signature(g.prefill_length), contract.DECODE
        cache = set(contract.cache_names(g.cache_layers))
        # Every LiteRT object lives in `rt`, released (quietly) when the engine goes or at exit.
        self.rt = types.SimpleNamespace()
        weakref.finalize(self, _release_quietly, self.rt)
        with litert_cache.cached_main_model(b) as files, native_stderr_silenced():
            # (the runtime logs each accelerator it probes, at INFO)
            _load_compiled_model(self.rt, b, files, threads)
        if files:  # the packed weights are in their own file now (litert_cache.py)
            mapped_pages.page_out(files.model)
        with native_stderr_silenced():
            model = self.rt.model
            self.rt.cache = {n: model.create_input_buffer_by_name(self.decode_sig, n) for n in cache}
            self.rt.inputs = {sig: {n: model.create_input_buffer_by_name(sig, n)
                                    for n in model.get_input_tensor_details(sig) if n not in cache}
                              for sig in (self.prefill_sig, self.decode_sig)}
            self.rt.logits = model.create_output_buffer_by_name(self.decode_sig, "logits")
        super().__init__(b, stores)

    def _clear(self) -> None:
        with native_stderr_silenced():  # the first write into a buffer can start an environment
            for name, shape in self.cache_shapes.items():
                self.rt.cache[name].write(np.zeros(shape, np.float32))

    def _run(self, sig: str, ids: np.ndarray, positions: np.ndarray) -> None:
        inputs = self.rt.inputs[sig]
        for name, value in self._inputs(ids, positions).items():
            inputs[name].write(value)
        outputs = dict(self.rt.cache)
        if sig == self.decode_sig:
            outputs["logits"] = self.rt.logits
        self.rt.model.run_by_name(sig, inputs | self.rt.cache, outputs)

    def _run_prefill(self, ids, positions) -> None:
        self._run(self.prefill_sig, ids, positions)

    def _run_decode(self, ids, positions) -> np.ndarray:
        self._run(self.decode_sig, ids, positions)
        return self.rt.logits.read(self.vocab_size, np.float32)


class _Signature:
    """One signature of a LiteRT Interpreter, fed through views on its own tensors.

    The stock SignatureRunner resizes, re-allocates, and copies every input in and every output
    out on each call: for the KV cache that is the whole cache through numpy twice per token.
    Here the cache lives in the signature's input tensors between calls and only the slots a call
    wrote are copied back from its outputs. (Uses the runner's tensor indices; ai-edge-litert is
    pinned.)
    """

    def __init__(self, interpreter, name: str):
        runner = interpreter.get_signature_runner(name)
        self._w, self._sg = runner._interpreter_wrapper, runner._subgraph_index
        self.inputs, self.outputs = dict(runner._inputs), dict(runner._outputs)
        self._w.AllocateTensors(self._sg)
        self.ran = False

    def input(self, name: str) -> np.ndarray:
        """A writable view; drop it before invoke() (the interpreter refuses to run while views
        into its buffers are alive)."""
        return self._w.tensor(self._w, self.inputs[name], self._sg)

    def output(self, name: str) -> np.ndarray:
        return self._w.tensor(self._w, self.outputs[name], self._sg)

    def invoke(self, feeds: dict[str, np.ndarray]) -> None:
        for name, value in feeds.items():
            self._w.SetTensor(self.inputs[name], value, self._sg)
        self._w.Invoke(self._sg)


class InterpreterEngine(Engine):
    """LiteRT's Interpreter API: runs on every arm64 core (see the module doc)."""

    api = "interpreter"
    warms_up = True

    def __init__(self, b: Bundle, threads: int | None = None, stores: StoreOptions = StoreOptions()):
        from ai_edge_litert.interpreter import Interpreter

        path, g = b.file(b.graph.file), b.graph
        with litert_cache.cached_main_model(b) as files:
            # Mapped from the cached section when there is one: XNNPACK packs the weights into its
            # own memory while the signatures allocate, and the original's pages are kept out of
            # the resident set meanwhile and after (mapped_pages.py).
            self._mapped = files.model if files else None
            source = {"model_path": str(files.model)} if files else {"model_content": _main_section(b)[1]}
            with mapped_pages.paged_out_while(files.model) if files else contextlib.nullcontext():
                try:
                    self.interpreter = Interpreter(**source, num_threads=threads or default_threads())
                except Exception as e:
                    raise EdgepackError(f"LiteRT cannot load {path}: {e}") from None
                self.prefill_sig = _Signature(self.interpreter, contract.prefill_signature(g.prefill_length))
                self.decode_sig = _Signature(self.interpreter, contract.DECODE)
        super().__init__(b, stores)

    def _clear(self) -> None:
        for sig in (self.prefill_sig, self.decode_sig):
            for name in self.cache_names:
                sig.input(name).fill(0.0)
        self._holder = self.decode_sig  # the signature whose input tensors hold the current cache

    def _run(self, sig: _Signature, ids: np.ndarray, positions: np.ndarray) -> None:
        if sig is not self._holder:  # switching between prefill and decode: move the cache once
            for name in self.cache_names:
                sig.input(name)[...] = self._holder.input(name)
            self._holder = sig
        sig.invoke(self._inputs(ids, positions))
        if self._mapped and not sig.ran:  # XNNPACK has packed this signature's weights by now
            mapped_pages.page_out(self._mapped)
        sig.ran = True
        # The graph wrote the slots of positions input_pos[0] onwards (rings wrap).
        for name in self.cache_names:
            dst, src = sig.input(name), sig.output(name)
            copy_slots(dst, src, name, int(positions[0]), len(ids), src_is_cache=True)
            del dst, src

    def _run_prefill(self, ids, positions) -> None:
        self._run(self.prefill_sig, ids, positions)

    def _run_decode(self, ids, positions) -> np.ndarray:
        self._run(self.decode_sig, ids, positions)
        return self.decode_sig.output("logits")[0, -1].copy()


def _release_quietly(rt: types.SimpleNamespace) -> None:
    with native_stderr_silenced():
        rt.__dict__.pop("model", None)  # before the bytes it may have been built from (rt.section)
        gc.collect()
        rt.__dict__.clear()
        gc.collect()
