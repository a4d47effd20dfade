"""The com.microsoft (onnxruntime) ops in edgepack's ONNX graphs: `contrib`, the schema every one
of them needs to be exported, and the ops that are not quantization: the fused rotary embedding
and GroupQueryAttention (the quantized layers are in onnx_quant.py).

Each kernel is reached from torch as a small custom op whose eager implementation is the plain
arithmetic (so a model still runs, and is exported, in torch) and whose entry in TRANSLATIONS is
the com.microsoft node (`torch.onnx.export(custom_translation_table=...)`).
"""

from __future__ import annotations

import torch

from edgepack.contract import window_rows

_SCHEMAS = {  # name -> (inputs (name, optional), attributes (float ones marked), outputs)
    "MatMulNBits": ((("A", False), ("B", False), ("scales", False), ("zero_points", True)),
                    ("K", "N", "bits", "block_size", "accuracy_level"), ("Y",)),
    "GatherBlockQuantized": ((("data", False), ("indices", False), ("scales", False), ("zero_points", True)),
                             ("gather_axis", "quantize_axis", "block_size", "bits"), ("Y",)),
    "RotaryEmbedding": ((("input", False), ("position_ids", False), ("cos_cache", False), ("sin_cache", False)),
                        ("interleaved", "num_heads"), ("Y",)),
    "GroupQueryAttention": ((("query", False), ("key", False), ("value", False), ("past_key", False),
                             ("past_value", False), ("seqlens_k", False), ("total_sequence_length", False),
                             ("cos_cache", False), ("sin_cache", False)),
                            ("num_heads", "kv_num_heads", "scale:float", "local_window_size", "sliding_window_cache",
                             "do_rotary"),
                            ("output", "present_key", "present_value")),
}


def contrib(name: str):
    """A com.microsoft op for onnxscript. The onnx package has no schemas for onnxruntime's
    contrib ops and the exporter needs one, so a minimal one is registered once."""
    import onnx
    from onnx.defs import OpSchema
    from onnxscript import values

    if not onnx.defs.has(name, "com.microsoft"):
        inputs, attrs, outputs = _SCHEMAS[name]
        param = OpSchema.FormalParameterOption
        kind = OpSchema.AttrType
        onnx.defs.register_schema(OpSchema(
            name, "com.microsoft", 1,
            inputs=[OpSchema.FormalParameter(n, f"T{i}", param_option=param.Optional if opt else param.Single)
                    for i, (n, opt) in enumerate(inputs)],
            outputs=[OpSchema.FormalParameter(n, "TY") for n in outputs],
            type_constraints=[(f"T{i}", ["tensor(float)", "tensor(uint8)", "tensor(int32)", "tensor(int64)"], "")
                              for i in range(len(inputs))] + [("TY", ["tensor(float)"], "")],
            attributes=[OpSchema.Attribute(a.split(":")[0], kind.FLOAT if a.endswith(":float") else kind.INT)
                        for a in attrs]))
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


@torch.library.custom_op("edgepack::group_query_attention", mutates_args=())
def group_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_k: torch.Tensor,
                          past_v: torch.Tensor, seqlens_k: torch.Tensor, total: torch.Tensor, cos: torch.Tensor,
                          sin: torch.Tensor, heads: int, kv_heads: int, scale: float, window: int,
                          windowed_cache: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """onnxruntime's GroupQueryAttention, as plain arithmetic: q [1, S, heads*D] and the chunk's k, v
    [1, S, kv_heads*D] at positions total-S .. total-1, q and k rotated there by the rotate-half RoPE
    of cos/sin [positions, D/2], over the cache [1, kv_heads, C, D] (K and V alike); returns the
    attention [1, S, heads*D] and the caches with the chunk written. Causal; `window` > 0 limits
    query p to keys past p - window. A linear cache keeps position p in row p; a `windowed_cache`
    keeps only the latest contract.window_rows() positions, from row 0."""
    s, c, d = q.shape[1], past_k.shape[2], past_k.shape[3]
    t = int(total)
    pos = torch.arange(t - s, t)

    def rotate(x, n):  # [1, S, n*D] -> [1, n, S, D], rotated at the chunk's positions
        x = x.reshape(1, s, n, d).transpose(1, 2)
        lo, hi = x[..., :d // 2], x[..., d // 2:]
        cs, sn = cos[pos], sin[pos]
        return torch.cat([lo * cs - hi * sn, hi * cs + lo * sn], dim=-1)

    held = window_rows(t - s, c, window) if windowed_cache else t - s
    keys = torch.cat([past_k[:, :, :held], rotate(k, kv_heads)], dim=2)
    values = torch.cat([past_v[:, :, :held], v.reshape(1, s, kv_heads, d).transpose(1, 2)], dim=2)
    k_pos = torch.arange(t - s - held, t)
    visible = k_pos <= pos[:, None]
    if window > 0:
        visible &= k_pos > pos[:, None] - window
    group = heads // kv_heads  # query head h reads KV head h // group
    scores = rotate(q, heads) @ keys.repeat_interleave(group, dim=1).transpose(2, 3) * scale
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    out = (probs @ values.repeat_interleave(group, dim=1)).transpose(1, 2).reshape(1, s, heads * d)
    rows = window_rows(t, c, window) if windowed_cache else t
    first = 0 if windowed_cache else t - s  # a windowed cache may move every row it keeps
    present_k, present_v = past_k.clone(), past_v.clone()
    present_k[:, :, first:rows] = keys[:, :, keys.shape[2] - (rows - first):]
    present_v[:, :, first:rows] = values[:, :, values.shape[2] - (rows - first):]
    return out, present_k, present_v


@group_query_attention.register_fake
def _(q, k, v, past_k, past_v, seqlens_k, total, cos, sin, heads, kv_heads, scale, window, windowed_cache):
    return torch.empty_like(q), torch.empty_like(past_k), torch.empty_like(past_v)


def _onnx_group_query_attention(q, k, v, past_k, past_v, seqlens_k, total, cos, sin, heads: int, kv_heads: int,
                                scale: float, window: int, windowed_cache: bool):
    return contrib("GroupQueryAttention")(q, k, v, past_k, past_v, seqlens_k, total, cos, sin, num_heads=heads,
                                          kv_num_heads=kv_heads, scale=scale, local_window_size=window,
                                          sliding_window_cache=int(windowed_cache), do_rotary=1)


TRANSLATIONS = {torch.ops.edgepack.rotary.default: _onnx_rotary,
                torch.ops.edgepack.group_query_attention.default: _onnx_group_query_attention}
