"""Embedding tables as memory-mapped row stores (Gemma 3n's PLE table; the read side is
runtime/row_store.py).

Layout of a quantized store (one file or a range inside one): signed codes row after row (int8,
or int4 two per byte with the lower column in the low nibble, as TFLite packs int4), then float32
scales [rows, cols / block]. A value is `code * scale`, times the store's constant `scale`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from edgepack.converters import quantize
from edgepack.converters.quant_plan import TensorPlan
from edgepack.errors import EdgepackError
from edgepack.plan import RowStore


def signed_codes(q: quantize.QTensor) -> np.ndarray:
    c = (q.codes.astype(np.int16) - 2 ** (q.bits - 1)).astype(np.int8)
    return c if q.bits == 8 else quantize.pack_int4(c.view(np.uint8))  # two's complement nibbles


def write(path: Path, chunks: Iterable[np.ndarray], plan: TensorPlan, scale: float) -> RowStore:
    """Write the table `plan` describes, given as float32 row blocks (Source.row_chunks),
    quantizing block by block: the float table is never whole in memory."""
    rows, cols = plan.shape
    block = plan.block or cols
    scales, written = [], 0
    with open(path, "wb") as f:
        for chunk in chunks:
            if chunk.ndim != 2 or chunk.shape[1] != cols or written + len(chunk) > rows:
                raise EdgepackError(f"{plan.name}: rows of shape {chunk.shape} after {written} rows do not "
                                    f"make the planned [{rows}, {cols}]")
            written += len(chunk)
            if plan.bits == 32:
                f.write(np.ascontiguousarray(chunk, dtype=np.float32).tobytes())
                continue
            q = quantize.round_to_grid(chunk, plan.bits, block, symmetric=True)
            f.write(signed_codes(q).tobytes())
            scales.append(q.scales)
        if written != rows:
            raise EdgepackError(f"{plan.name}: {written} rows written, {rows} planned")
        if plan.bits == 32:
            return RowStore(path.name, 0, [rows, cols], "float32", scale)
        scales_offset = f.tell()
        f.write(np.concatenate(scales).astype(np.float32).tobytes())
    return RowStore(path.name, 0, [rows, cols], f"int{plan.bits}", scale, block, scales_offset)
