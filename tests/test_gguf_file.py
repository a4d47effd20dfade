"""converters/gguf_file.py against gguf-py's own reader (the format's reference implementation) on
the real 270M GGUF, and on damaged copies of its header."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from edgepack.converters.gguf_file import GGUFFile
from edgepack.errors import EdgepackError


def test_reads_what_gguf_py_reads(gguf_270m):
    import gguf

    ref = gguf.GGUFReader(str(gguf_270m))
    ours = GGUFFile(gguf_270m)
    ref_fields = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}  # its own extras
    assert ours.fields == ref_fields
    assert len(ours.fields["tokenizer.ggml.tokens"]) == 262_144
    assert [t.name for t in ref.tensors] == list(ours.tensors)
    for t in ref.tensors:
        mine = ours.tensors[t.name]
        assert (mine.tensor_type, mine.shape.tolist()) == (t.tensor_type, t.shape.tolist()), t.name
        assert (mine.data.dtype, mine.data.shape) == (t.data.dtype, t.data.shape), t.name
        assert np.array_equal(mine.data, t.data), t.name


def _header(path) -> bytes:
    with open(path, "rb") as f:
        return f.read(8 << 20)  # the 270M's metadata and tensor table fit in its first 8 MiB


@pytest.mark.parametrize("damage,message", [
    (lambda h: b"GGUG" + h[4:], "no GGUF magic"),
    (lambda h: h[:4] + struct.pack("<I", 9) + h[8:], "version 9"),
    (lambda h: h[:8] + struct.pack("<Q", 1 << 60) + h[16:], "can't fit"),
    (lambda h: h[:24] + struct.pack("<Q", 1 << 62) + h[32:], "runs past the end"),  # the first key's length
    (lambda h: h[:1 << 20], "runs past the end|ends inside its header"),  # inside the vocabulary
    (lambda h: h, "runs past the end of the file"),  # the header whole, the tensors' data cut off
])
def test_damaged_files_are_refused_in_one_line(gguf_270m, tmp_path, damage, message):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damage(_header(gguf_270m)))
    with pytest.raises(EdgepackError, match=message) as e:
        GGUFFile(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_an_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(EdgepackError, match="empty"):
        GGUFFile(tmp_path / "empty.gguf")
