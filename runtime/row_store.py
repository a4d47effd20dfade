"""Embedding tables kept out of the graph: memory-mapped, only the gathered rows are read.

Gemma 3n's per-layer embedding table is 2.0B parameters for E2B; decoding reads one row of it per
token. Mapping the file (instead of loading it) means only the touched pages become resident.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class RowStore:
    def __init__(self, folder: Path, spec: dict):
        self.spec = spec
        self.rows, self.cols = (int(d) for d in spec["shape"])
        self.scale = np.float32(spec["scale"])
        self.table = np.memmap(folder / spec["file"], dtype=np.dtype(spec["dtype"]), mode="r",
                               offset=int(spec["offset"]), shape=(self.rows, self.cols))

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """Rows for `ids` [T] times the table's scale, [T, cols] float32. Ids outside the table
        (Gemma 3n's multimodal soft tokens, >= 262,144) read row 0, as transformers does."""
        ids = np.where((ids >= 0) & (ids < self.rows), ids, 0)
        return self.table[ids].astype(np.float32) * self.scale
