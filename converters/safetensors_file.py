"""Reading .safetensors files tensor by tensor, or a block of rows at a time, into owned float32
arrays.

The format (https://huggingface.co/docs/safetensors/index#format): an 8-byte little-endian header
length N, N bytes of JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{...}}`, then the tensors' bytes, offsets counted from the end of the header. Nothing is executed.

Why not `safetensors.safe_open`: it maps the file, and every page a read touches stays in the
process's resident set until the file is closed. Exporting full-size E2B that way counted 4.7 GB of
checkpoint pages on top of the export's own memory. `pread` into a buffer the reader owns keeps the
resident set to what the export holds.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError

_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}
_MAX_HEADER = 100 << 20  # the reference implementation's own limit
_BLOCK = 16 << 20  # bf16 values read at a time (32 MiB)


def _ints(v, length: int | None = None) -> bool:
    """A list of non-negative whole numbers (of `length` entries, when given)."""
    return (isinstance(v, list) and (length is None or len(v) == length)
            and all(type(x) is int and x >= 0 for x in v))


class SafetensorsFile:
    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n <= min(size - 8, _MAX_HEADER):
                raise EdgepackError(f"{path} is not a safetensors file (bad header length)")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise EdgepackError(f"{path}: unreadable safetensors header ({e})") from None
        self.data_start = 8 + n
        self.tensors: dict[str, tuple[str, tuple[int, ...], int]] = {}  # name -> (dtype, shape, offset)
        if not isinstance(header, dict):
            raise EdgepackError(f"{path}: the safetensors header is not a JSON object")
        for name, t in header.items():
            if name == "__metadata__":
                continue
            if not (isinstance(t, dict) and isinstance(t.get("dtype"), str) and _ints(t.get("data_offsets"), 2)
                    and _ints(t.get("shape"))):
                raise EdgepackError(f"{path}: tensor {name!r} has no dtype, shape and data_offsets "
                                    "(not a safetensors header)")
            begin, end = t["data_offsets"]
            shape = tuple(t["shape"])
            if not 0 <= begin <= end:
                raise EdgepackError(f"{path}: tensor {name!r} has data_offsets out of order")
            item = _ITEMSIZE.get(t["dtype"])
            if (item is not None and end - begin != math.prod(shape) * item) or self.data_start + end > size:
                raise EdgepackError(f"{path}: tensor {name} does not fit its shape {list(shape)} or the file "
                                    "(truncated or corrupt checkpoint)")
            self.tensors[name] = (t["dtype"], shape, begin)
        self._fd = os.open(path, os.O_RDONLY)

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def dtype(self, name: str) -> str:
        return self.tensors[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][1]

    def read(self, name: str) -> np.ndarray:
        shape = self.shape(name)
        if not shape:
            return self.read_rows(name, 0, 1).reshape(())
        return self.read_rows(name, 0, shape[0])

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the tensor's first axis as float32."""
        dtype, shape, begin = self.tensors[name]
        if dtype not in _ITEMSIZE:
            raise EdgepackError(f"{self.path}: tensor {name} is {dtype}; edgepack reads {', '.join(_ITEMSIZE)}")
        row = math.prod(shape[1:]) * _ITEMSIZE[dtype]
        offset, count = self.data_start + begin + start * row, (stop - start) * row // _ITEMSIZE[dtype]
        if dtype == "BF16":  # the upper half of a float32: read a block at a time straight into it, so
            out = np.zeros(count, np.uint32)  # E2B's 2.1 GB embedding costs no full-size temporaries
            upper = out.view(np.uint16)[1::2] if sys.byteorder == "little" else out.view(np.uint16)[::2]
            block = np.empty(max(1, min(count, _BLOCK)), np.uint16)
            for a in range(0, count, len(block)):
                n = min(len(block), count - a)
                self._pread(block[:n], offset + 2 * a, name)
                upper[a:a + n] = block[:n]
            out = out.view(np.float32)
        else:
            buf = np.empty(count * _ITEMSIZE[dtype], np.uint8)
            self._pread(buf, offset, name)
            out = buf.view(np.float16 if dtype == "F16" else np.float32).astype(np.float32, copy=False)
        return out.reshape((stop - start, *shape[1:]))

    def _pread(self, into: np.ndarray, offset: int, name: str) -> None:
        view = memoryview(into).cast("B")
        while view.nbytes:
            n = os.preadv(self._fd, [view], offset)
            if n == 0:
                raise EdgepackError(f"{self.path}: file ended inside tensor {name}")
            view, offset = view[n:], offset + n


SHARD_BYTES = 4 * 2**30  # transformers' own default shard size


def encode(x: np.ndarray, dtype: str) -> bytes:
    """float32 values as `dtype` bytes (BF16 rounded to nearest even; exact for values read from BF16)."""
    if dtype == "BF16":
        bits = x.astype(np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
    if dtype not in _ITEMSIZE:
        raise EdgepackError(f"edgepack writes {', '.join(_ITEMSIZE)} tensors, not {dtype}")
    return x.astype(np.float16 if dtype == "F16" else np.float32).tobytes()


def write_shards(folder: Path, tensors: dict[str, tuple[str, tuple[int, ...]]], chunks, on_values=None) -> None:
    """A Hugging Face checkpoint's weights: `model-0000K-of-0000N.safetensors` shards of at most
    SHARD_BYTES and `model.safetensors.index.json`. `tensors` maps a name to (dtype, shape);
    `chunks(name)` yields its float32 values in order, a block at a time (any shape), so a
    tensor is never whole in memory. `on_values(n)` is told each block's size (progress)."""
    groups, current, size = [], [], 0
    for name, (dtype, shape) in tensors.items():
        nbytes = _ITEMSIZE[dtype] * math.prod(shape)
        if current and size + nbytes > SHARD_BYTES:
            groups.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    groups.append(current)
    weight_map, total = {}, 0
    for k, names in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in names:
            dtype, shape = tensors[name]
            nbytes = _ITEMSIZE[dtype] * math.prod(shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        total += offset
        head = json.dumps(header, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)  # the format pads the header to 8 bytes
        with open(folder / fname, "wb") as f:
            f.write(len(head).to_bytes(8, "little") + head)
            for name in names:
                dtype, shape = tensors[name]
                written = 0
                for block in chunks(name):
                    f.write(encode(block, dtype))
                    written += block.size
                    if on_values:
                        on_values(block.size)
                if written != math.prod(shape):
                    raise EdgepackError(f"{name}: {written} values written for shape {list(shape)}")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
