"""Reading a GGUF file's metadata and tensor table, as the format's spec lays them out.

The format (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), all little-endian:
`GGUF`, a uint32 version (2 or 3), uint64 tensor and key-value counts; the key-value pairs (a
string key, a uint32 value type, the value); per tensor its name, uint32 dimension count, uint64
dimensions (fastest first), uint32 ggml type and uint64 offset; then, aligned to
`general.alignment` (32 by default), the tensor data, offsets counted from its start.

Why not gguf-py's `GGUFReader`: it builds a memory-mapped numpy view per value, and the 270M's
262,144-piece vocabulary takes it 15 s on a 2-core EPYC; this reads the same header in under a
second. gguf-py stays the reference: its dequantization kernels read the tensors, and the tests
compare this reader's fields and tensors with `GGUFReader`'s.

The file is untrusted: every count, length and offset is checked against the file's size before
anything is allocated, and an error names the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
import struct
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS


@dataclasses.dataclass
class GGUFTensor:
    name: str
    shape: np.ndarray  # dimensions as GGUF lists them, fastest first (as gguf-py's ReaderTensor)
    tensor_type: object  # gguf.GGMLQuantizationType
    data: np.ndarray  # float32/float16 values, or uint8 blocks: (..., bytes per row), as gguf-py gives


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def bad(self, what: str) -> EdgepackError:
        return EdgepackError(f"{self.path} is not a readable GGUF file: {what} (at byte {self.pos})")

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise self.bad("it ends inside its header")
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self) -> str:
        n = self.take("<Q")
        if n > len(self.buf) - self.pos:
            raise self.bad(f"a string of {n} bytes runs past the end")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise self.bad(f"unknown value type {kind}")
        item, n = self.take("<I"), self.take("<Q")
        if item in _NUMPY:
            size = np.dtype(_NUMPY[item]).itemsize * n
            if size > len(self.buf) - self.pos:
                raise self.bad(f"an array of {n} values runs past the end")
            values = np.frombuffer(self.buf, _NUMPY[item], n, self.pos).tolist()
            self.pos += size
            return values
        if n > len(self.buf) - self.pos:  # every element takes at least a byte
            raise self.bad(f"an array of {n} values runs past the end")
        return [self.value(item) for _ in range(n)]


class GGUFFile:
    """`fields`: key -> value (arrays as lists); `tensors`: name -> GGUFTensor, data mapped;
    `header_sha256`: the digest of everything before the tensor data."""

    def __init__(self, path: Path):
        import gguf

        self.path = path
        with open(path, "rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file can't be mapped
                raise EdgepackError(f"{path} is not a readable GGUF file: it is empty") from None
        c = _Cursor(memoryview(self._map), path)
        if bytes(c.buf[:4]) != b"GGUF":
            raise c.bad("no GGUF magic")
        c.pos = 4
        version = c.take("<I")
        if version not in (2, 3):
            raise c.bad(f"version {version} (2 and 3 are read)")
        n_tensors, n_fields = c.take("<Q"), c.take("<Q")
        if n_tensors > len(c.buf) // 24 or n_fields > len(c.buf) // 12:  # each takes at least that many bytes
            raise c.bad(f"{n_tensors} tensors and {n_fields} fields can't fit in {len(c.buf)} bytes")
        self.fields: dict[str, object] = {}
        for _ in range(n_fields):
            key = c.string()
            self.fields[key] = c.value(c.take("<I"))
        infos = []
        for _ in range(n_tensors):
            name, n_dims = c.string(), c.take("<I")
            if not 1 <= n_dims <= MAX_DIMS:
                raise c.bad(f"tensor {name!r} has {n_dims} dimensions")
            dims = [c.take("<Q") for _ in range(n_dims)]
            kind, offset = c.take("<I"), c.take("<Q")
            infos.append((name, dims, kind, offset))
        self.header_sha256 = hashlib.sha256(c.buf[:c.pos]).hexdigest()  # the metadata, vocabulary included
        align = self.fields.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise c.bad(f"general.alignment {align!r} is not a power of two")
        start = -(-c.pos // align) * align
        self.tensors: dict[str, GGUFTensor] = {}
        for name, dims, kind, offset in infos:
            try:
                qtype = gguf.GGMLQuantizationType(kind)
            except ValueError:
                raise c.bad(f"tensor {name!r} has unknown type {kind}") from None
            block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
            if dims[0] % block or any(d == 0 for d in dims):
                raise c.bad(f"tensor {name!r} has shape {dims}, not whole {block}-value blocks")
            rows = int(np.prod(dims[1:], dtype=object))
            row_bytes = dims[0] // block * block_bytes
            begin = start + offset
            if begin + rows * row_bytes > len(c.buf):
                raise c.bad(f"tensor {name!r} runs past the end of the file")
            data = np.frombuffer(self._map, np.uint8, rows * row_bytes, begin).reshape(*reversed(dims[1:]), row_bytes)
            if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                data = data.view(np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16)
            self.tensors[name] = GGUFTensor(name, np.array(dims, np.uint64), qtype, data)
