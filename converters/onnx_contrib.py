"""The com.microsoft (onnxruntime) ops in edgepack's ONNX graphs: `contrib`, the schema every one
of them needs to be exported, and the ops that are not quantization, for now the fused rotary
embedding (the quantized layers are in onnx_quant.py).

Each kernel is reached from torch as a small custom op whose eager implementation is the plain
arithmetic (so a model still runs, and is exported, in torch) and whose entry in TRANSLATIONS is
the com.microsoft node (`torch.onnx.export(custom_translation_table=...)`).
"""

from __future__ import annotations

import torch

_SCHEMAS = {  # name -> (inputs (name, optional), int attributes)
    "MatMulNBits": ((("A", False), ("B", False), ("scales", False), ("zero_points", True)),
                    ("K", "N", "bits", "block_size", "accuracy_level")),
    "GatherBlockQuantized": ((("data", False), ("indices", False), ("scales", False), ("zero_points", True)),
                             ("gather_axis", "quantize_axis", "block_size", "bits")),
    "RotaryEmbedding": ((("input", False), ("position_ids", False), ("cos_cache", False), ("sin_cache", False)),
                        ("interleaved", "num_heads")),
}


def contrib(name: str):
    """A com.microsoft op for onnxscript. The onnx package has no schemas for onnxruntime's
    contrib ops and the exporter needs one, so a minimal one is registered once."""
    import onnx
    from onnx.defs import OpSchema
    from onnxscript import values

    if not onnx.defs.has(name, "com.microsoft"):
        inputs, attrs = _SCHEMAS[name]
        param = OpSchema.FormalParameterOption
        onnx.defs.register_schema(OpSchema(
            name, "com.microsoft", 1,
            inputs=[OpSchema.FormalParameter(n, f"T{i}", param_option=param.Optional if opt else param.Single)
                    for i, (n, opt) in enumerate(inputs)],
            outputs=[OpSchema.FormalParameter("Y", "TY")],
            type_constraints=[(f"T{i}", ["tensor(float)", "tensor(uint8)", "tensor(int32)", "tensor(int64)"], "")
                              for i in range(len(inputs))] + [("TY", ["tensor(float)"], "")],
            attributes=[OpSchema.Attribute(a, OpSchema.AttrType.INT) for a in attrs]))
    return values.Op(values.Opset("com.microsoft", 1), name, onnx.defs.get_schema(name, 1, "com.microsoft"))


@torch.library.custom_op("edgepack::rotary", mutates_args=())
def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """Rotate-half RoPE of x [1, T, heads * D] by cos/sin [T, D/2] (the angles of the chunk's own
    positions): transformers' Gemma convention, as models/blocks.apply_rope."""
    t = x.shape[1]
    x = x.reshape(1, t, heads, -1)
    half = x.shape[-1] // 2
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    lo, hi = x[..., :half], x[..., half:]
    return torch.cat([lo * c - hi * s, hi * c + lo * s], dim=-1).reshape(1, t, -1)


@rotary.register_fake
def _(x, cos, sin, heads):
    return torch.empty_like(x)


def _onnx_rotary(x, cos, sin, heads: int):
    from onnxscript import opset18 as op

    # position_ids of shape [1] is an offset: row s of cos/sin is the chunk's position s
    return contrib("RotaryEmbedding")(x, op.Constant(value_ints=[0]), cos, sin, interleaved=0, num_heads=heads)


TRANSLATIONS = {torch.ops.edgepack.rotary.default: _onnx_rotary}
