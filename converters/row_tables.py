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

def signed_codes(q: quantize.QTensor) -> np.ndarray:
    c = (q.codes.astype(np.int16) - 2 ** (q.bits - 1)).astype(np.int8)
    if q.bits == 8:
        return c
    u = (c & 0x0F).astype(np.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)


def write(path: Path, chunks: Iterable[np.ndarray], shape: tuple[int, int], plan: TensorPlan, scale: float) -> dict:
    """Write a table given as float32 row blocks (Source.row_chunks), quantizing block by block:
    the float table is never whole in memory."""
    rows, cols = shape
    spec = {"file": path.name, "offset": 0, "shape": [rows, cols], "scale": scale}
    block = plan.block or cols
    scales = []
    with open(path, "wb") as f:
        for chunk in chunks:
            if plan.bits == 32:
                f.write(np.ascontiguousarray(chunk, dtype=np.float32).tobytes())
                continue
            q = quantize.round_to_grid(chunk, plan.bits, block, symmetric=True)
            f.write(signed_codes(q).tobytes())
            scales.append(q.scales)
        if plan.bits == 32:
            return spec | {"dtype": "float32"}
        scales_offset = f.tell()
        f.write(np.concatenate(scales).astype(np.float32).tobytes())
    return spec | {"dtype": f"int{plan.bits}", "block": block, "scales_offset": scales_offset}
