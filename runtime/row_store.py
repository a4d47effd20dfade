"""Embedding tables kept out of the graph: memory-mapped, only the gathered rows are read.

Gemma 3n's per-layer embedding table is 2.0B parameters for E2B; decoding reads one row of it per
token. Mapping the file (instead of loading it) means only the touched pages become resident.
Stores are float32, or int8 / int4 (signed, two per byte, low nibble first) with float32 scales
per block of a row; rows are dequantized as they are gathered (layout: converters/row_tables.py).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np


class RowStore:
    def __init__(self, folder: Path, spec: dict):
        self.spec = spec
        self.rows, self.cols = (int(d) for d in spec["shape"])
        self.scale = np.float32(spec["scale"])
        self.dtype = spec["dtype"]
        path = folder / spec["file"]
        width = {"float32": self.cols * 4, "int8": self.cols, "int4": self.cols // 2}[self.dtype]
        self.table = np.memmap(path, dtype=np.uint8, mode="r", offset=int(spec["offset"]), shape=(self.rows, width))
        _advise_random(self.table)
        if self.dtype == "float32":
            self.table = self.table.view(np.float32)
        else:
            self.block = int(spec["block"])
            self.scales = np.memmap(path, dtype=np.float32, mode="r", offset=int(spec["scales_offset"]),
                                    shape=(self.rows, self.cols // self.block))
            _advise_random(self.scales)

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """Rows for `ids` [T] times the table's scale, [T, cols] float32. Ids outside the table
        (Gemma 3n's multimodal soft tokens, >= 262,144) read row 0, as transformers does."""
        ids = np.where((ids >= 0) & (ids < self.rows), ids, 0)
        raw = self.table[ids]
        if self.dtype == "float32":
            return raw * self.scale
        if self.dtype == "int4":
            codes = np.empty((len(ids), self.cols), np.int8)
            codes[:, 0::2] = (raw << 4).view(np.int8) >> 4  # sign-extend the low nibble
            codes[:, 1::2] = raw.view(np.int8) >> 4
        else:
            codes = raw.view(np.int8)
        scales = self.scales[ids] * self.scale
        return (codes.reshape(len(ids), -1, self.block) * scales[..., None]).reshape(len(ids), self.cols)


def _advise_random(table: np.memmap) -> None:
    """Rows are gathered in token order, not file order. Two things would otherwise make far more
    of the table resident than the rows touched: readahead (MADV_RANDOM turns it off) and a page
    cache already holding the table as large folios (after a sequential read such as a copy or a
    checksum), which a fault maps whole, up to megabytes per row; dropping the table's clean
    cached pages first (they are re-read, a page at a time, as rows are gathered) avoids that."""
    m = getattr(table, "_mmap", None)
    if m is None:
        return
    if hasattr(mmap, "MADV_RANDOM"):
        m.madvise(mmap.MADV_RANDOM)
    if hasattr(os, "posix_fadvise"):
        with open(table.filename, "rb") as f:
            os.posix_fadvise(f.fileno(), table.offset, table.nbytes, os.POSIX_FADV_DONTNEED)
