"""Quantized layers for the ONNX graph: onnxruntime's MatMulNBits and GatherBlockQuantized.

Before export, the float `nn.Linear`s and the tied embedding a recipe quantizes are swapped for
the modules below. Each calls a small torch custom op whose eager implementation dequantizes (so
the quantized model still runs in torch, for tests) and whose ONNX translation is the
com.microsoft kernel, with the packed codes, scales and zero points as initializers named after
the checkpoint's module. The tied embedding stores its codes once, as MatMulNBits' [N, blocks,
bytes] layout, which GatherBlockQuantized also reads (quantize_axis=2, one block per last-axis row).

Zero points: onnxruntime's fast blockwise kernels take them only as packed uint8 integers; float
zero points send MatMulNBits down a reference path about 60x slower. Integer ones (our own
asymmetric rounding) are packed as uint8. A GGUF Q4_K block (`d*sc*q - dmin*m`) has a
fractional zero point, so it is stored exactly as codes with zero point 0 plus a per-block
offset `s*zp`, subtracted as `blocksum(x) @ offsets.T`: a [T, K/block] x [K/block, N] float
matmul, a few percent of the layer's work.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgepack.converters.onnx_contrib import contrib
from edgepack.converters.quantize import QTensor, pack_int4

# onnxruntime CPU: 4 = int8 activations in the blockwise kernels (what llama.cpp and
# onnxruntime-genai's int4 models run with); 0 = float activations.
ACCURACY_LEVEL = 4


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., B] -> [..., 2B], low nibble first."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(*packed.shape[:-1], -1)


def _dequantize(packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None,
                bits: int, block: int) -> torch.Tensor:
    """MatMulNBits' weight: B [N, blocks, bytes], zero points packed uint8 [N, ceil(blocks*bits/8)]."""
    n, blocks = scales.shape[0], scales.numel() // scales.shape[0]
    codes = packed.reshape(n, blocks, -1)
    if bits == 4:
        codes = _nibbles(codes).reshape(n, blocks, block)
    if zero_points is None:
        zp = torch.full_like(scales.reshape(n, blocks), 2 ** (bits - 1))
    else:
        zp = (_nibbles(zero_points) if bits == 4 else zero_points)[:, :blocks].float()
    w = (codes.float() - zp[..., None]) * scales.reshape(n, blocks)[..., None]
    return w.reshape(n, blocks * block)


@torch.library.custom_op("edgepack::matmul_nbits", mutates_args=())
def matmul_nbits(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor,
                 bits: int, block: int, has_zp: bool) -> torch.Tensor:
    return x @ _dequantize(packed, scales, zero_points if has_zp else None, bits, block).T


@matmul_nbits.register_fake
def _(x, packed, scales, zero_points, bits, block, has_zp):
    return x.new_empty(*x.shape[:-1], packed.shape[0])


@torch.library.custom_op("edgepack::gather_nbits", mutates_args=())
def gather_nbits(packed: torch.Tensor, ids: torch.Tensor, scales3: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    w = _dequantize(packed, scales3.reshape(scales3.shape[0], -1), None, bits, block)
    return w[ids]


@gather_nbits.register_fake
def _(packed, ids, scales3, bits, block):
    return packed.new_empty(*ids.shape, scales3.shape[1] * block, dtype=torch.float32)


def _onnx_matmul_nbits(x, packed, scales, zero_points, bits: int, block: int, has_zp: bool):
    n, k_blocks = packed.shape[0], packed.shape[1]
    inputs = (x, packed, scales, zero_points) if has_zp else (x, packed, scales)
    return contrib("MatMulNBits")(*inputs, K=k_blocks * block, N=n, bits=bits, block_size=block,
                          accuracy_level=ACCURACY_LEVEL)


def _onnx_gather_nbits(packed, ids, scales3, bits: int, block: int):
    from onnxscript import opset18 as op

    rows = contrib("GatherBlockQuantized")(packed, ids, scales3, gather_axis=0, quantize_axis=2, block_size=block, bits=bits)
    shape = op.Concat(op.Shape(ids), op.Constant(value_ints=[-1]), axis=0)
    return op.Reshape(rows, shape)


TRANSLATIONS = {torch.ops.edgepack.matmul_nbits.default: _onnx_matmul_nbits,
                torch.ops.edgepack.gather_nbits.default: _onnx_gather_nbits}


def _pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    z = np.rint(zp).astype(np.uint8)
    if bits == 8:
        return z
    if z.shape[1] % 2:
        z = np.pad(z, ((0, 0), (0, 1)))
    return pack_int4(z)


def _buffers(module: nn.Module, q: QTensor) -> None:
    n, k = q.shape
    blocks = k // q.block
    module.bits, module.block = q.bits, q.block
    module.register_buffer("qweight", torch.from_numpy(q.packed().reshape(n, blocks, -1).copy()))
    module.register_buffer("scales", torch.from_numpy(q.scales.copy()))
    zp, offsets = q.zero_points, None
    if zp is not None and not np.array_equal(zp, np.rint(zp)):  # fractional (GGUF Q4_K): see above
        zp, offsets = np.zeros_like(zp), q.scales.reshape(n, blocks) * zp.reshape(n, blocks)
    module.has_zp = zp is not None
    packed_zp = _pack_zero_points(zp.reshape(n, blocks), q.bits) if zp is not None else np.zeros((n, 1), np.uint8)
    module.register_buffer("zero_points", torch.from_numpy(packed_zp))
    module.register_buffer("block_offsets", None if offsets is None else torch.from_numpy(offsets.astype(np.float32)))


class QuantLinear(nn.Module):
    def __init__(self, q: QTensor):
        super().__init__()
        _buffers(self, q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = matmul_nbits(x, self.qweight, self.scales, self.zero_points, self.bits, self.block, self.has_zp)
        if self.block_offsets is not None:
            y = y - torch.matmul(x.reshape(*x.shape[:-1], -1, self.block).sum(-1), self.block_offsets.T)
        return y


def linears(x: torch.Tensor, modules: list[nn.Module]) -> list[torch.Tensor]:
    """Each module applied to x. QuantLinears of one layout (bits, block, zero points, no offsets)
    run as one MatMulNBits over their rows stacked, split after: one kernel call where there were
    several small ones (the 270M's decode step: 36 fewer nodes with q/k/v fused, as
    onnxruntime-genai's builder fuses them). The stacked codes are a Concat of the modules' own
    initializers, which onnxruntime folds into one at load (the exporter's optimizer stops at
    8,192 elements)."""
    plain = all(isinstance(m, QuantLinear) and m.block_offsets is None for m in modules)
    if len(modules) < 2 or not plain or len({(m.bits, m.block, m.has_zp) for m in modules}) > 1:
        return [m(x) for m in modules]
    first = modules[0]
    y = matmul_nbits(x, torch.cat([m.qweight for m in modules]), torch.cat([m.scales for m in modules]),
                     torch.cat([m.zero_points for m in modules]), first.bits, first.block, first.has_zp)
    return list(y.split([m.qweight.shape[0] for m in modules], dim=-1))


class QuantTiedEmbedding(nn.Module):
    """Lookup (GatherBlockQuantized) and LM head (MatMulNBits) over one set of codes."""

    def __init__(self, q: QTensor):
        super().__init__()
        if q.zero_points is not None:
            raise ValueError("the tied embedding is stored symmetric (GatherBlockQuantized reads no float zero points)")
        _buffers(self, q)
        self.register_buffer("scales3", self.scales[..., None].clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return gather_nbits(self.qweight, ids, self.scales3, self.bits, self.block)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return matmul_nbits(h, self.qweight, self.scales, self.zero_points, self.bits, self.block, False)


def swap_in(model: nn.Module, quantized: dict[str, QTensor]) -> None:
    """Replace the modules whose `<name>.weight` has a QTensor."""
    for name, q in quantized.items():
        path = name.removesuffix(".weight")
        parent_name, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, attr)
        new = QuantTiedEmbedding(q) if isinstance(old, nn.Embedding) else QuantLinear(q)
        setattr(parent, attr, new)
