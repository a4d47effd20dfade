"""The engine for a bundle: onnxruntime for ONNX, LiteRT (either API) for `.litertlm`."""

from __future__ import annotations

from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError
from edgepack.runtime.engine import Engine
from edgepack.runtime.litert_engine import litert_engine
from edgepack.runtime.onnx_engine import OnnxEngine
from edgepack.runtime.row_store import StoreOptions


def open_engine(b: Bundle, threads: int | None = None, stores: StoreOptions = StoreOptions()) -> Engine:
    if threads is not None and not 1 <= threads <= 1024:
        raise EdgepackError(f"--threads must be from 1 to 1024, got {threads}")
    if b.format == "onnx":
        return OnnxEngine(b, threads, stores)
    return litert_engine(b, threads, stores)
