"""Dropping the resident pages of a memory-mapped file that a library has read and won't read again.

onnxruntime maps model.onnx.data privately and builds, from each MatMulNBits weight, its own
repacked copy on the heap ("prepacking"). The mapped pages it read to do so stay in the process's
resident set, and the tied embedding, which is both the embedding gather's table and the LM
head's (prepacked) weight, is read whole: full-size E2B int4 keeps 0.9 GB of such pages after
loading.

`drop(path)` tells the kernel (madvise MADV_DONTNEED) that this process doesn't need the resident
pages of its mappings of `path`. For a private mapping that was never written, that only unmaps
them: the data stays in the page cache (reclaimable, no longer this process's), and a page read
later, such as an embedding row the gather looks up, faults back in from it. A mapping holding
written (copy-on-write, anonymous) pages is left alone, since dropping those would lose the
writes. Call it only when no other thread maps or unmaps memory (after a session has loaded, not
while it loads): MADV_DONTNEED on a range that was just unmapped and reused for heap memory would
zero it. Elsewhere than Linux nothing happens.

Not done while loading: the load's peak (originals and repacked copies together) stays. It is
made of clean file pages the kernel reclaims under a memory limit rather than killing the process.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

MADV_DONTNEED = 4  # <asm-generic/mman-common.h>, the same on x86-64 and arm64
_VMA = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def mappings(path: Path) -> list[tuple[int, int, int]]:
    """(start, end, written bytes) of each mapping of `path` in this process."""
    target, out, vma = str(Path(path).resolve()), [], None
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                m = _VMA.match(line)
                if m:
                    vma = [int(m[1], 16), int(m[2], 16), 0] if m[3] == target else None
                    if vma:
                        out.append(vma)
                elif vma is not None and line.startswith("Anonymous:"):
                    vma[2] = int(line.split()[1]) * 1024
    except OSError:  # no /proc: not Linux
        return []
    return [tuple(v) for v in out]


def drop(path: Path) -> int:
    """Drops the resident pages of every unwritten mapping of `path`; returns the bytes of
    address space advised."""
    advised = 0
    for start, end, written in mappings(path):
        if written == 0 and _madvise(start, end - start, MADV_DONTNEED) == 0:
            advised += end - start
    return advised


def _madvise(start: int, length: int, advice: int) -> int:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc.madvise(start, length, advice)
    except (OSError, AttributeError):
        return -1
