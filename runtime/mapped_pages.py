"""Keeping a memory-mapped file's pages out of the resident set once a library has read them.

onnxruntime maps model.onnx.data privately and builds, from each MatMulNBits weight, its own
repacked copy on the heap ("prepacking"). Every mapped page it reads stays in the process's
resident set, though nothing reads most of them again, and the tied embedding, both the embedding
gather's table and the LM head's (prepacked) weight, is read whole. Full-size E2B int4: 0.9 GB of
such pages after the load, and a 3.0 GB peak during it, when originals and copies coexist.

Two measures, both telling the kernel what the process no longer needs:
- While a session loads, `paged_out_while(path)` runs a thread that asks the kernel every 10 ms
  to reclaim the pages of every mapping of `path` (MADV_PAGEOUT, Linux 5.4+). Reclaiming never
  loses data: a clean file page is re-read from the file if touched again, and if onnxruntime has
  meanwhile unmapped a range and reused it for heap memory, anonymous pages are at most swapped
  out. The kernel only reclaims pages this process alone maps, and skips a large folio that spans
  several of onnxruntime's per-tensor mappings, so `read_in_base_pages(path)` first fills the page
  cache with the file in base (4 KiB) pages: E2B's load peak 3.0 -> 2.4 GB.
- After the load, `drop(path)` unmaps the resident pages left (MADV_DONTNEED): only then, because
  on a range another thread might unmap and reuse meanwhile it would zero live memory. Mappings
  holding written (copy-on-write) pages are left alone, since dropping would lose the writes.

What the graph reads in place later (an embedding row the gather looks up, a norm's weights)
faults back in. Elsewhere than Linux nothing happens.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import threading
from pathlib import Path
from typing import Iterator

MADV_DONTNEED, MADV_PAGEOUT = 4, 21  # <asm-generic/mman-common.h>, the same on x86-64 and arm64
INTERVAL_S = 0.01
READ_BLOCK = 1 << 20
_VMA = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def mappings(path: Path, smaps: bool = True) -> list[tuple[int, int, int]]:
    """(start, end, written bytes) of each mapping of `path` in this process; written bytes only
    from /proc/self/smaps (slower: it walks the page tables), else 0."""
    target, out, vma = str(Path(path).resolve()), [], None
    try:
        with open("/proc/self/smaps" if smaps else "/proc/self/maps") as f:
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
    """Unmaps the resident pages of every unwritten mapping of `path`; returns the bytes of
    address space advised. Only while no other thread maps or unmaps memory."""
    advised = 0
    for start, end, written in mappings(path):
        if written == 0 and _madvise(start, end - start, MADV_DONTNEED) == 0:
            advised += end - start
    return advised


def page_out(path: Path) -> None:
    """Asks the kernel to reclaim the pages of every mapping of `path` (safe from any thread)."""
    for start, end, _ in mappings(path, smaps=False):
        _madvise(start, end - start, MADV_PAGEOUT)


def read_in_base_pages(path: Path) -> None:
    """Replaces the file's cached pages with base pages: evicts what the page cache holds of it
    (pages another process maps stay) and reads it back with readahead off, which allocates no
    large folios."""
    if not hasattr(os, "posix_fadvise") or not Path(path).exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            offset += len(os.pread(fd, READ_BLOCK, offset))
    finally:
        os.close(fd)


@contextlib.contextmanager
def paged_out_while(path: Path) -> Iterator[None]:
    """Reads `path` into base pages, then keeps paging its mappings out while the block runs (a
    library loading from it)."""
    read_in_base_pages(path)
    done = threading.Event()

    def keep_paging_out() -> None:
        while not done.wait(INTERVAL_S):
            page_out(path)

    thread = threading.Thread(target=keep_paging_out, name="page-out", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _madvise(start: int, length: int, advice: int) -> int:
    madvise = _libc_madvise()
    return -1 if madvise is None else madvise(start, length, advice)


@functools.cache
def _libc_madvise():
    """libc's madvise, looked up once (the page-out thread calls it for every mapping, every
    tick); None where there is none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return fn
