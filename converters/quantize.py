"""Weight quantization: blockwise integer grids, rounded from floats or transcoded from GGUF blocks.

A `QTensor` is the form onnxruntime's MatMulNBits / GatherBlockQuantized and edgepack's row stores
share: unsigned codes in [0, 2^bits), one float scale per block of `block` weights along a row,
and a zero point per block (None = the symmetric midpoint 2^(bits-1)). Dequantized:
`(code - zero_point) * scale`.

GGUF transcoding reads the codes straight out of llama.cpp's blocks, so a tensor keeps the exact
values the GGUF holds: Q8_0 -> 8-bit block 32, Q5_0 -> 8-bit block 32 (codes offset by 112),
Q6_K -> 8-bit block 16 (one scale per 16 weights: d * sub-scale), Q4_K -> 4-bit block 32 with
scale d*sc and a float zero point dmin*m / (d*sc). Every transcode is checked against gguf-py's
own dequantization before it is used.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgepack.errors import EdgepackError


@dataclasses.dataclass
class QTensor:
    bits: int
    block: int
    codes: np.ndarray  # uint8 [rows, cols]
    scales: np.ndarray  # float32 [rows, cols // block]
    zero_points: np.ndarray | None  # float32 [rows, cols // block], None = 2^(bits-1)
    how: str  # "rounded", "exact from Q4_K", ...

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def zp(self) -> np.ndarray:
        if self.zero_points is not None:
            return self.zero_points
        return np.full(self.scales.shape, 2 ** (self.bits - 1), np.float32)

    def dequantize(self) -> np.ndarray:
        rows, cols = self.shape
        q = self.codes.reshape(rows, cols // self.block, self.block).astype(np.float32)
        return ((q - self.zp()[..., None]) * self.scales[..., None]).reshape(rows, cols)

    def packed(self) -> np.ndarray:
        """Codes as stored: 8-bit as is, 4-bit two per byte, the lower column in the low nibble."""
        return self.codes if self.bits == 8 else pack_int4(self.codes)

    def nbytes(self) -> int:
        """Bytes as stored: codes, float32 scales, zero points packed like the codes
        (onnxruntime's layout) and, for fractional GGUF minimums, a float32 offset per block."""
        n = self.codes.size * self.bits // 8 + self.scales.nbytes
        if self.zero_points is not None:
            rows, blocks = self.zero_points.shape
            n += rows * -(-blocks * self.bits // 8)
            if not np.array_equal(self.zero_points, np.rint(self.zero_points)):
                n += self.zero_points.size * 4
        return n


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """4-bit codes (the low 4 bits of each value, an even count in the last axis) two per byte, the
    lower column in the low nibble: the layout of TFLite's INT4, onnxruntime's MatMulNBits and
    edgepack's row stores alike."""
    codes = codes.astype(np.uint8) & 0x0F
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """pack_int4 undone: unsigned codes 0..15."""
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def round_to_grid(w: np.ndarray, bits: int, block: int, symmetric: bool = True) -> QTensor:
    """Round-to-nearest on a blockwise grid. Symmetric: scale = max|w| / (2^(bits-1) - 1), codes
    around the midpoint. Asymmetric (4-bit): the block's [min, max] spans all 2^bits codes, with an
    integer zero point, which halves int4's error on skewed blocks."""
    rows, cols = w.shape
    block = block or cols
    if cols % block:
        raise EdgepackError(f"a row of {cols} weights does not split into blocks of {block}")
    wb = w.reshape(rows, cols // block, block).astype(np.float32)
    top = 2 ** bits - 1
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = np.abs(wb).max(-1) / qmax
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        q = np.clip(np.rint(wb / scale[..., None]), -qmax, qmax) + 2 ** (bits - 1)
        zp = None
    else:
        lo, hi = np.minimum(wb.min(-1), 0), np.maximum(wb.max(-1), 0)
        scale = ((hi - lo) / top).astype(np.float32)
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        zp = np.clip(np.rint(-lo / scale), 0, top).astype(np.float32)
        q = np.clip(np.rint(wb / scale[..., None]) + zp[..., None], 0, top)
    return QTensor(bits, block, q.astype(np.uint8).reshape(rows, cols), scale, zp, "rounded")


def round_rows(chunks, bits: int, block: int, symmetric: bool = True) -> QTensor:
    """round_to_grid over a tensor given as row blocks (blocks run along rows, so rounding a
    block of rows at a time gives the same codes), never holding more than one block in float."""
    parts = [round_to_grid(c, bits, block, symmetric) for c in chunks]
    zp = None if symmetric else np.concatenate([p.zero_points for p in parts])
    return QTensor(bits, block, np.concatenate([p.codes for p in parts]),
                   np.concatenate([p.scales for p in parts]), zp, "rounded")


# ---- GGUF blocks -> QTensor ------------------------------------------------------------------

def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)[..., 0]


def _q8_0(blocks: np.ndarray):
    d, qs = _f16(blocks[:, :2]), blocks[:, 2:].view(np.int8)
    return 8, 32, (qs.astype(np.int16) + 128).astype(np.uint8), d[:, None], None


def _q5_0(blocks: np.ndarray):
    n = blocks.shape[0]
    d = _f16(blocks[:, :2])
    qh = np.ascontiguousarray(blocks[:, 2:6]).view(np.uint32).reshape(n, 1) >> np.arange(32, dtype=np.uint32)
    ql = blocks[:, 6:].reshape(n, 1, 16) >> np.array([0, 4], np.uint8).reshape(1, 2, 1)
    q = (ql & 0x0F).reshape(n, 32) | (((qh & 1).astype(np.uint8)) << 4)
    return 8, 32, q + np.uint8(112), d[:, None], None  # d*(q-16) == d*((q+112)-128)


def _q6_k(blocks: np.ndarray):
    n = blocks.shape[0]
    ql, qh, sc, d = blocks[:, :128], blocks[:, 128:192], blocks[:, 192:208].view(np.int8), _f16(blocks[:, 208:210])
    lo = ((ql.reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F).reshape(n, 2, 4, 32)
    hi = ((qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 0x03)
    q = (lo | (hi << 4)).reshape(n, 256)  # 0..63, value d*sc*(q-32)
    return 8, 16, q + np.uint8(96), (d[:, None] * sc.astype(np.float32)), None


def _q4_k(blocks: np.ndarray):
    from gguf.quants import Q4_K

    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    sc, m = Q4_K.get_scale_min(np.ascontiguousarray(blocks[:, 4:16]))
    sc, m = sc.reshape(n, 8).astype(np.float32), m.reshape(n, 8).astype(np.float32)
    q = ((blocks[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F).reshape(n, 256)
    scale = d[:, None] * sc
    offset = dmin[:, None] * m  # value = scale*q - offset
    # A block whose scale is 0 holds the constant -offset: code 0 with scale=offset, zero point 1.
    dead = scale == 0
    zp = np.where(dead, 1.0, offset / np.where(dead, 1.0, scale)).astype(np.float32)
    scale = np.where(dead, offset, scale).astype(np.float32)
    if dead.any():
        q = np.where(np.repeat(dead, 32, axis=1), 0, q).astype(np.uint8)
    return 4, 32, q, scale, zp


_TRANSCODERS = {"Q8_0": _q8_0, "Q5_0": _q5_0, "Q6_K": _q6_k, "Q4_K": _q4_k}
GRID_BITS = {"Q8_0": 8, "Q5_0": 5, "Q6_K": 6, "Q4_K": 4, "F32": 32, "F16": 16, "BF16": 16}


def transcode_gguf(tensor) -> QTensor | None:
    """The GGUF tensor's own grid as a QTensor, or None if its type has no exact form here.
    Checked against gguf-py's dequantization (relative to the block scale)."""
    import gguf

    kind = tensor.tensor_type.name
    if kind not in _TRANSCODERS:
        return None
    rows = int(np.prod(tensor.shape.tolist()[1:]))
    cols = int(tensor.shape[0])
    raw = np.asarray(tensor.data).reshape(-1, gguf.GGML_QUANT_SIZES[tensor.tensor_type][1])
    bits, block, codes, scales, zp = _TRANSCODERS[kind](raw)
    qt = QTensor(bits, block, codes.reshape(rows, cols), scales.reshape(rows, cols // block).astype(np.float32),
                 None if zp is None else zp.reshape(rows, cols // block), f"exact from {kind}")
    reference = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(rows, cols)
    tol = 1e-5 * np.abs(qt.scales).max() * 2 ** bits
    err = float(np.abs(qt.dequantize() - reference).max())
    if err > tol:
        raise EdgepackError(f"{tensor.name}: transcoding {kind} is off by {err:g} (internal error)")
    return qt
