"""onnxruntime repacks every MatMulNBits weight of an ONNX bundle into its own heap copy; the
mapped model.onnx.data pages it read to do so leave the process's resident set once the session
has loaded (runtime/mapped_pages.py), as the kernel's own accounting (/proc/self/smaps) shows.
That the outputs stay right is test_equivalence's and test_quantization's job: every ONNX run
there goes through the same engine."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgepack.bundle import Bundle


def mapped_and_resident(path: Path) -> tuple[int, int]:
    """Bytes of address space mapping `path` in this process, and how many of them are resident."""
    target, mapped, resident, inside = str(path.resolve()), 0, 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$", line)
        if m:
            inside = m[3] == target
            mapped += (int(m[2], 16) - int(m[1], 16)) if inside else 0
        elif inside and line.startswith("Rss:"):
            resident += int(line.split()[1]) * 1024
    return mapped, resident


def test_weights_read_for_repacking_leave_the_resident_set(bundle):
    from edgepack.runtime.onnx_engine import OnnxEngine

    b = Bundle(bundle("gemma3n_causal", "onnx", "int4"))
    data = b.file("model.onnx.data")
    engine = OnnxEngine(b, threads=1)
    mapped, resident = mapped_and_resident(data)
    assert mapped > 0 and resident == 0  # onnxruntime keeps mappings; none of their pages is resident
    engine.prefill(np.arange(2, 40, dtype=np.int32))
    engine.decode(7, 38)
    # What the graph reads in place comes back: the embedding rows gathered, the float vectors.
    _, resident = mapped_and_resident(data)
    assert 0 < resident < 0.25 * data.stat().st_size


def test_paged_out_mapping_leaves_the_resident_set(tmp_path):
    """The mechanism the engine uses while onnxruntime loads, on a mapping of our own: pages read
    into base pages, mapped and touched are resident; after MADV_PAGEOUT the kernel has reclaimed
    them, and reading them again gives the file's bytes."""
    import mmap

    from edgepack.runtime import mapped_pages

    path = tmp_path / "weights.bin"
    payload = np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8)
    path.write_bytes(payload.tobytes())
    mapped_pages.read_in_base_pages(path)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    view = np.frombuffer(mm, np.uint8)
    assert int(view[::4096].sum()) >= 0  # touch every page
    assert mapped_and_resident(path)[1] == 8 << 20
    mapped_pages.page_out(path)
    assert mapped_and_resident(path)[1] < (8 << 20) // 10
    assert np.array_equal(view, payload)
    del view
    mm.close()
