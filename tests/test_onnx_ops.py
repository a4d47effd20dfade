"""onnxruntime's fused kernels in edgepack's ONNX graphs (converters/onnx_contrib.py), each run by
onnxruntime against transformers' own arithmetic."""

from __future__ import annotations

import numpy as np
import torch


def test_the_fused_rotary_embedding_is_transformers_rope(tmp_path):
    """blocks.apply_rope lowers to one com.microsoft RotaryEmbedding node, which onnxruntime
    computes as transformers' Gemma RoPE (rotate-half) at positions past the chunk's start."""
    import onnx
    import onnxruntime as ort
    from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb

    from edgepack.converters import onnx_export
    from edgepack.converters.models import blocks

    t, h, d, theta = 5, 3, 64, 10_000.0

    class Rope(torch.nn.Module):
        def forward(self, x, input_pos):
            return blocks.apply_rope(x, *blocks.rope_cos_sin(input_pos, blocks.rope_inv_freq(d, theta)))

    seq = torch.export.Dim("seq", min=1, max=64)
    program = torch.onnx.export(Rope(), (torch.zeros(1, t, h, d), torch.arange(t, dtype=torch.int32)), dynamo=True,
                                input_names=["x", "input_pos"], dynamic_shapes=({1: seq}, {0: seq}),
                                custom_translation_table=onnx_export.TRANSLATIONS, verbose=False)
    path = tmp_path / "rope.onnx"
    program.save(str(path))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("RotaryEmbedding") == 1 and "Neg" not in ops, ops

    x, pos = torch.randn(1, 4, h, d), torch.arange(700, 704)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy(), "input_pos": pos.numpy().astype(np.int32)})[0]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)  # as Gemma3RotaryEmbedding
    freqs = pos[:, None].float() * inv_freq[None]
    emb = torch.cat([freqs, freqs], dim=-1)[None]
    want, _ = apply_rotary_pos_emb(x, x, emb.cos(), emb.sin(), unsqueeze_dim=2)
    # float32 angles near 700 rad are 6e-5 apart (one ulp), and two ways of computing one may land an
    # ulp apart; a wrong rotation (interleaved pairs, a sign) is off by the size of x itself
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4 * np.abs(x.numpy()).max(), rtol=0)
    assert np.abs(got - x.numpy()).max() > 0.5  # the positions do rotate x
