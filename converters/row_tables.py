"""Embedding tables as memory-mapped row stores (Gemma 3n's PLE table; the read side is
runtime/row_store.py).

Layout of a quantized store (one file or a range inside one): signed codes row after row (int8,
or int4 two per byte with the lower column in the low nibble, as TFLite packs int4), then float32
scales [rows, cols / block]. A value is `code * scale`, times the store's constant `scale`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.converters import quantize
from edgepack.converters.quant_plan import TensorPlan

_CHUNK = 8192  # rows quantized at a time: the whole fp32 table never needs a second copy


def signed_codes(q: quantize.QTensor) -> np.ndarray:
    c = (q.codes.astype(np.int16) - 2 ** (q.bits - 1)).astype(np.int8)
    if q.bits == 8:
        return c
    u = (c & 0x0F).astype(np.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)


def write(path: Path, table: np.ndarray, plan: TensorPlan, scale: float) -> dict:
    rows, cols = table.shape
    spec = {"file": path.name, "offset": 0, "shape": [rows, cols], "scale": scale}
    if plan.bits == 32:
        np.ascontiguousarray(table, dtype=np.float32).tofile(path)
        return spec | {"dtype": "float32"}
    block = plan.block or cols
    scales = []
    with open(path, "wb") as f:
        for start in range(0, rows, _CHUNK):
            q = quantize.round_to_grid(table[start:start + _CHUNK], plan.bits, block, symmetric=True)
            f.write(signed_codes(q).tobytes())
            scales.append(q.scales)
        scales_offset = f.tell()
        f.write(np.concatenate(scales).astype(np.float32).tobytes())
    return spec | {"dtype": f"int{plan.bits}", "block": block, "scales_offset": scales_offset}
