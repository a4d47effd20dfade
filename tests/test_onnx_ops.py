"""onnxruntime's fused kernels in edgepack's ONNX graphs (converters/onnx_contrib.py), each run by
onnxruntime against transformers' (or torch's) own arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
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


@pytest.mark.parametrize("window, windowed_cache", [(-1, False), (6, False), (6, True)])
def test_group_query_attention_is_causal_rotated_attention_over_its_own_cache(tmp_path, window, windowed_cache):
    """blocks' group-query attention lowers to one com.microsoft GroupQueryAttention. Driven as the
    runtime drives it (cache buffers bound as both input and present_* output, chunks of 1-5
    tokens), each query's output is torch's scaled-dot-product attention over the keys its
    position may see, q and k rotated by transformers' Gemma RoPE; the windowed cache keeps only
    window + slack rows and moves them as it fills. The op's eager form agrees with the kernel."""
    import onnx
    import onnxruntime as ort
    from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb

    from edgepack import contract
    from edgepack.converters import onnx_contrib, onnx_export
    from edgepack.converters.models import blocks

    h, kvh, d, positions, scale = 4, 2, 16, 40, 0.3
    chunks = [5, 1, 1, 4, 1, 1, 1, 3, 1, 1, 1, 1, 2, 1, 1, 1]
    rows = window + contract.window_slack(window) if windowed_cache else positions
    inv_freq = blocks.rope_inv_freq(d, 10_000.0)

    class Attention(torch.nn.Module):
        def forward(self, q, k, v, past_k, past_v, input_pos):
            cos, sin = blocks.rope_cos_sin(torch.arange(positions, dtype=torch.int32), inv_freq)
            return onnx_contrib.group_query_attention(q, k, v, past_k, past_v, input_pos[-1:], input_pos[-1] + 1,
                                                      cos[:, :d // 2], sin[:, :d // 2], h, kvh, scale, window,
                                                      windowed_cache)

    seq = torch.export.Dim("seq", min=1, max=positions)
    sample = (torch.zeros(1, 3, h * d), torch.zeros(1, 3, kvh * d), torch.zeros(1, 3, kvh * d),
              torch.zeros(1, kvh, rows, d), torch.zeros(1, kvh, rows, d), torch.arange(3, dtype=torch.int32))
    program = torch.onnx.export(Attention(), sample, dynamo=True,
                                input_names=["q", "k", "v", "past_k", "past_v", "input_pos"],
                                output_names=["out", "present_k", "present_v"],
                                dynamic_shapes=({1: seq}, {1: seq}, {1: seq}, None, None, {0: seq}),
                                custom_translation_table=onnx_export.TRANSLATIONS, verbose=False)
    path = tmp_path / "gqa.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("GroupQueryAttention") == 1

    n = sum(chunks)
    torch.manual_seed(0)
    q, k, v = torch.randn(1, n, h * d), torch.randn(1, n, kvh * d), torch.randn(1, n, kvh * d)
    # the reference: every position at once, rotated as transformers does, each query over the
    # keys its position sees (causal, within the window)
    pos = torch.arange(n)
    freqs = pos[:, None].float() * inv_freq[None]
    emb = torch.cat([freqs, freqs], dim=-1)[None]
    heads = lambda x, m: x.reshape(1, n, m, d).transpose(1, 2)  # noqa: E731
    rq, rk = apply_rotary_pos_emb(heads(q, h), heads(k, kvh), emb.cos(), emb.sin())
    ago = pos[:, None] - pos[None, :]
    visible = (ago >= 0) & ((ago < window) if window > 0 else True)
    want = torch.nn.functional.scaled_dot_product_attention(
        rq, rk.repeat_interleave(h // kvh, 1), heads(v, kvh).repeat_interleave(h // kvh, 1), attn_mask=visible,
        scale=scale).transpose(1, 2).reshape(n, h * d)

    k_cache, v_cache = np.zeros((1, kvh, rows, d), np.float32), np.zeros((1, kvh, rows, d), np.float32)
    bound = [ort.OrtValue.ortvalue_from_numpy(a) for a in (k_cache, v_cache)]
    eager_k, eager_v = torch.zeros(1, kvh, rows, d), torch.zeros(1, kvh, rows, d)
    start = 0
    for t in chunks:
        part = slice(start, start + t)
        io = session.io_binding()
        out = np.empty((1, t, h * d), np.float32)
        io.bind_ortvalue_output("out", ort.OrtValue.ortvalue_from_numpy(out))
        for name, x in (("q", q), ("k", k), ("v", v)):
            io.bind_cpu_input(name, x[:, part].numpy().copy())
        io.bind_cpu_input("input_pos", np.arange(start, start + t, dtype=np.int32))
        for name, value in zip(("k", "v"), bound):
            io.bind_ortvalue_input(f"past_{name}", value)
            io.bind_ortvalue_output(f"present_{name}", value)
        session.run_with_iobinding(io)
        np.testing.assert_allclose(out[0], want[part].numpy(), atol=2e-5, rtol=0)
        eager, eager_k, eager_v = Attention()(q[:, part], k[:, part], v[:, part], eager_k, eager_v,
                                              torch.arange(start, start + t, dtype=torch.int32))
        np.testing.assert_allclose(eager[0].numpy(), out[0], atol=2e-5, rtol=0)
        start += t
        held = contract.window_rows(start, rows, window) if windowed_cache else start
        # the rows the kernel keeps: the latest `held` positions (keys rotated), from row 0 on a
        # windowed cache, at their own position on a linear one
        np.testing.assert_allclose(k_cache[:, :, :held], eager_k[:, :, :held].numpy(), atol=2e-5, rtol=0)
        np.testing.assert_allclose(v_cache[:, :, :held], heads(v, kvh)[:, :, start - held:start].numpy(), atol=0)
    assert start > rows or not windowed_cache  # the windowed cache did move its rows
