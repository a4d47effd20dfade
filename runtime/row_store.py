"""Embedding tables kept out of the graph: memory-mapped, only the gathered rows are read.

Gemma 3n's per-layer embedding table is 2.0B parameters for E2B; decoding reads one row of it per
token. Mapping the file (instead of loading it) means only the touched pages become resident.
Stores are float32, or int8 / int4 (signed, two per byte, low nibble first) with float32 scales
per block of a row; rows are dequantized as they are gathered (layout: converters/row_tables.py).

Decode gathers one row into buffers the store owns, so a token allocates nothing; prefill gathers
all of a chunk's rows in one vectorized read. Options (`StoreOptions`, `edgepack run
--ple-cache-mb / --ple-advice`), and what they trade:
- `advice="random"` (default): no readahead, and the table's clean cached pages are dropped on
  open, so a row costs a page or two of resident memory (E2B int4: 0.5% of the table resident
  after 768 tokens). Each new row is a page fault that reads from storage: on an SD card, ~0.1 ms.
- `advice="normal"`: the kernel's readahead; fewer faults, but each one maps up to megabytes of
  neighbouring rows nobody asked for.
- `advice="willneed"`: read the whole table in at open: the fastest first tokens and the whole
  table resident (E2B int4: 1.2 GB). For devices with memory to spare.
- `cache_mb`: a hot-row cache of dequantized rows (float32: 8x an int4 row) with an LRU budget.
  Rows repeat (punctuation, common words), so it saves the dequantization and keeps those rows
  resident even when the kernel reclaims the mapping's pages under memory pressure. Its memory is
  counted: it's the budget, allocated up front. Nothing is ever locked (mlock): on a phone, locked
  pages only move the memory pressure onto other apps.
"""

from __future__ import annotations

import collections
import dataclasses
import mmap
import os
from pathlib import Path

import numpy as np

from edgepack import plan
from edgepack.errors import EdgepackError

ADVICE = ("random", "normal", "willneed")


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    cache_mb: float = 0.0  # hot-row cache for the per-layer embedding store, MiB of float32 rows
    advice: str = "random"  # one of ADVICE

    def __post_init__(self):
        if self.advice not in ADVICE:
            raise EdgepackError(f"--ple-advice must be one of {', '.join(ADVICE)}, got {self.advice!r}")
        if not 0 <= self.cache_mb < 1 << 20:  # NaN and inf fail too
            raise EdgepackError(f"--ple-cache-mb must be a number of MiB from 0 to 2**20, got {self.cache_mb}")


class HotRows:
    """LRU cache of dequantized rows in one slab allocated up front (a miss reuses the oldest
    slot, so caching allocates nothing per token either)."""

    def __init__(self, budget_bytes: int, cols: int):
        self.capacity = budget_bytes // (4 * cols)
        self.slab = np.empty((self.capacity, cols), np.float32)
        self.slots: collections.OrderedDict[int, int] = collections.OrderedDict()  # row -> slot
        self.hits = self.misses = 0

    def get(self, row: int) -> np.ndarray | None:
        slot = self.slots.get(row)
        if slot is None:
            self.misses += 1
            return None
        self.slots.move_to_end(row)
        self.hits += 1
        return self.slab[slot:slot + 1]

    def put(self, row: int) -> np.ndarray:
        """The slot for `row` (the caller fills it)."""
        slot = len(self.slots) if len(self.slots) < self.capacity else self.slots.popitem(last=False)[1]
        self.slots[row] = slot
        return self.slab[slot:slot + 1]


class RowStore:
    def __init__(self, path: Path, spec: plan.RowStore, advice: str = "random", cache_mb: float = 0.0):
        """`path`: the store's file, already checked by the bundle (Bundle.file); `spec`: where in
        it the table sits, checked against its size when the manifest was read."""
        self.spec = spec
        self.rows, self.cols = spec.rows, spec.cols
        self.scale = np.float32(spec.scale)
        self.dtype = spec.dtype
        self.block = spec.block or self.cols
        width = spec.row_bytes
        self.table = np.memmap(path, dtype=np.uint8, mode="r", offset=spec.offset, shape=(self.rows, width))
        _advise(self.table, advice)
        self.scales = None
        if self.dtype == "float32":
            self.table = self.table.view(np.float32)
        else:
            self.scales = np.memmap(path, dtype=np.float32, mode="r", offset=spec.scales_offset,
                                    shape=(self.rows, self.cols // self.block))
            _advise(self.scales, advice)
        # decode's buffers, reused every token
        self._row = np.empty((1, self.cols), np.float32)
        self._codes = np.empty((1, self.cols), np.int8)
        self._nibbles = np.empty((1, width), np.uint8)
        self._scales = np.empty((1, self.cols // self.block), np.float32)
        self._spread = np.empty((1, self.cols), np.float32)
        cache_bytes = int(cache_mb * 2**20)
        self.cache = HotRows(cache_bytes, self.cols) if cache_bytes >= 4 * self.cols else None

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """Rows for `ids` [T] times the table's scale, [T, cols] float32. Ids outside the table
        (Gemma 3n's multimodal soft tokens, >= 262,144) read row 0, as transformers does.
        One id (decode) returns a buffer the store reuses: valid until the next call."""
        if len(ids) == 1:
            return self._one(int(ids[0]))
        ids = np.where((ids >= 0) & (ids < self.rows), ids, 0)
        raw = self.table[ids]
        out = np.empty((len(ids), self.cols), np.float32)
        self._dequantize(raw, None if self.scales is None else self.scales[ids], out, np.empty(out.shape, np.int8),
                         np.empty_like(raw), np.empty((len(ids), self.cols // self.block), np.float32),
                         np.empty_like(out))
        return out

    def _one(self, row: int) -> np.ndarray:
        row = row if 0 <= row < self.rows else 0
        out = self._row
        if self.cache is not None:
            hit = self.cache.get(row)
            if hit is not None:
                return hit
            out = self.cache.put(row)
        self._dequantize(self.table[row:row + 1], None if self.scales is None else self.scales[row:row + 1],
                         out, self._codes, self._nibbles, self._scales, self._spread)
        return out

    def _dequantize(self, raw: np.ndarray, scales: np.ndarray | None, out: np.ndarray, codes: np.ndarray,
                    nibbles: np.ndarray, scaled: np.ndarray, spread: np.ndarray) -> None:
        """raw [T, width] -> out [T, cols], through scratch for the same rows: `codes` [T, cols]
        int8, `nibbles` like raw, `scaled` [T, blocks] and `spread` [T, cols] float32."""
        if self.dtype == "float32":
            np.multiply(raw, self.scale, out=out)
            return
        if self.dtype == "int4":
            np.left_shift(raw, 4, out=nibbles)
            np.right_shift(nibbles.view(np.int8), 4, out=codes[:, 0::2])  # sign-extends the low nibble
            np.right_shift(raw.view(np.int8), 4, out=codes[:, 1::2])
        else:
            codes = raw.view(np.int8)
        # Cast, spread each block's scale over its columns, multiply like-shaped arrays: a mixed
        # int8 x float32 or a broadcasting multiply goes through numpy's internal buffers
        # (an allocation per call); these three steps don't.
        np.multiply(scales, self.scale, out=scaled)
        np.copyto(out, codes)
        np.copyto(spread.reshape(len(raw), -1, self.block), scaled[..., None])
        np.multiply(out, spread, out=out)


def _advise(table: np.memmap, advice: str) -> None:
    """Rows are gathered in token order, not file order. Two things would otherwise make far more
    of the table resident than the rows touched: readahead (MADV_RANDOM turns it off) and a page
    cache already holding the table as large folios (after a sequential read such as a copy or a
    checksum), which a fault maps whole, up to megabytes per row; dropping the table's clean
    cached pages first (they are re-read, a page at a time, as rows are gathered) avoids that."""
    m = getattr(table, "_mmap", None)
    if m is None or advice == "normal":
        return
    if advice == "willneed":
        if hasattr(mmap, "MADV_WILLNEED"):
            m.madvise(mmap.MADV_WILLNEED)
        return
    if hasattr(mmap, "MADV_RANDOM"):
        m.madvise(mmap.MADV_RANDOM)
    if hasattr(os, "posix_fadvise"):
        with open(table.filename, "rb") as f:
            os.posix_fadvise(f.fileno(), table.offset, table.nbytes, os.POSIX_FADV_DONTNEED)
