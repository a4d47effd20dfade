"""`edgepack profile`: the analytic model against hand-computed numbers for the real E2B/E4B
layouts, the plan-before-converting against what the exporter then writes, a measured run against
the prediction, and the HTML report."""

from __future__ import annotations

import base64
import json
import re

import pytest

from edgepack.cli import main
from edgepack.profile import plan_from_checkpoint, plan_from_preset, profile

MiB = 2**20
CONTEXT = 4096


def int4_block32(n: int, scale_bytes: int = 2) -> int:
    """4-bit codes + one scale per 32 weights: float16 in a .litertlm (what ai-edge-quantizer
    writes, test_litertlm_block_scales_are_float16), float32 in ONNX."""
    return n // 2 + n // 32 * scale_bytes


@pytest.mark.parametrize("preset,layers,ffn,shared", [("gemma-3n-E2B", 30, 8192, 10), ("gemma-3n-E4B", 35, 16384, 15)])
def test_gemma3n_prediction_matches_hand_computed(preset, layers, ffn, shared):
    fp, comps = plan_from_preset(preset, "int4", "litertlm", CONTEXT, 128, "compiled")
    hidden, kv_dim, vocab = 2048, 2 * 256, 262_400
    owners = layers - shared  # 20 in both
    assert owners == 20
    # attention: q and o everywhere, k and v only where a layer owns its cache
    attention = layers * 2 * hidden * hidden + owners * 2 * kv_dim * hidden
    assert comps["attention"]["bytes"] == int4_block32(attention)
    assert comps["mlp"]["bytes"] == int4_block32(layers * 3 * hidden * ffn)
    # the tied embedding / LM head: int8, one scale per row
    assert comps["embedding"]["bytes"] == vocab * hidden + vocab * 4
    # PLE table, int4 one scale per row: never in the graph
    assert comps["per_layer_table"]["bytes"] == 262_144 * (layers * 256 // 2 + 4)
    # KV cache, K + V x 2 heads x 256 float32 per slot: the 4 global layers among the 20 owners
    # keep the 4096-token context, the 16 sliding-window ones a ring of window 512 + prefill 128 - 1
    slots = 4 * CONTEXT + 16 * (512 + 128 - 1)
    assert fp.parts["kv_cache"] == slots * 2 * 2 * 256 * 4
    onnx_fp, _ = plan_from_preset(preset, "int4", "onnx", CONTEXT, 128, "onnx")
    assert onnx_fp.parts["kv_cache"] == (4 * CONTEXT + 16 * 512) * 2 * 2 * 256 * 4  # ONNX rings: the window
    # row stores: every token of the context touches one row of each table, and the page after
    # it (rows don't start on page boundaries): E2B's PLE row is 3,844 bytes (2 pages), E4B's 4,484 (3)
    ple_pages = -(-(layers * 256 // 2 + 4) // 4096) + 1
    assert fp.parts["row_stores"] == CONTEXT * (ple_pages + 2) * 4096
    graph = sum(c["bytes"] for name, c in comps.items() if name != "per_layer_table")
    assert abs(fp.parts["weights"] / graph - 1.0) < 0.01  # LiteRT's packed weights, mapped from its cache


def test_a_4bit_lm_head_is_planned_apart_from_the_lookup_table():
    """int4-head4: in a Gemma 3n .litertlm the LM head's copy of the tied embedding is 4-bit
    blocks of 32 and the embedder's table stays int8 per row; ONNX stores the table once, at the
    head's precision."""
    vocab, hidden = 262_400, 2048
    fp8, comps8 = plan_from_preset("gemma-3n-E2B", "int4", "litertlm", CONTEXT, 128, "compiled")
    fp4, comps4 = plan_from_preset("gemma-3n-E2B", "int4-head4", "litertlm", CONTEXT, 128, "compiled")
    assert comps4["lm_head"]["bytes"] == int4_block32(vocab * hidden)
    assert comps4["embedding"] == comps8["embedding"]  # the embedder's table: a row store, unchanged
    assert fp4.parts["row_stores"] == fp8.parts["row_stores"]
    saved = vocab * hidden + vocab * 4 - int4_block32(vocab * hidden)  # int8 per row -> int4 blocks of 32
    assert fp8.parts["weights"] - fp4.parts["weights"] == pytest.approx(saved, rel=1e-6)
    _, onnx4 = plan_from_preset("gemma-3n-E2B", "int4-head4", "onnx", CONTEXT, 128, "onnx")
    assert "embedding" not in onnx4 and onnx4["lm_head"]["bytes"] == int4_block32(vocab * hidden, scale_bytes=4)


def test_litertlm_block_scales_are_float16(bundle):
    """quant_plan counts 2 bytes per block scale of a .litertlm weight: every 4-bit weight of an
    int4 bundle's main model has blockwise scales, and the file holds them as FLOAT16."""
    from ai_edge_litert import schema_py_generated as tfl

    from edgepack.bundle import Bundle
    from test_stitch import main_model

    model = main_model(Bundle(bundle("gemma3n_causal", "litertlm", "int4")))
    scales = []
    for g in model.subgraphs:
        for t in g.tensors:
            if t.type == tfl.TensorType.INT4 and len(t.shape) == 2:
                assert isinstance(t.quantization.details, tfl.BlockwiseQuantizationT), t.name
                scales.append(g.tensors[t.quantization.details.scales].type)
    assert scales and set(scales) == {tfl.TensorType.FLOAT16}


@pytest.mark.parametrize("name,fmt,quant", [
    # the multimodal layout (text under model.language_model, towers beside it) and the quantized
    # recipes on the causal layout: bundles other tests export too
    ("gemma3n_multimodal", "litertlm", "none"), ("gemma3n_multimodal", "onnx", "none"),
    ("gemma3n_causal", "litertlm", "int4"), ("gemma3n_causal", "onnx", "int4"),
    ("gemma3n_causal", "litertlm", "int4-head4"),
])
def test_plan_before_converting_matches_the_export(name, fmt, quant, checkpoint, bundle):
    """What `profile CHECKPOINT --quant RECIPE` plans is what `export --quant RECIPE` writes."""
    from edgepack.bundle import Bundle
    from edgepack.footprint import predict

    fp, comps = plan_from_checkpoint(str(checkpoint(name)), quant, fmt, 64, 8, "onnx" if fmt == "onnx" else "compiled")
    b = Bundle(bundle(name, fmt, quant))
    written = b.manifest["precision"]["components"]
    assert set(comps) == set(written)
    for name, c in comps.items():
        assert sorted(c["precisions"]) == sorted(written[name]["precisions"]), name
        # ONNX's 4-bit zero points (half a byte per block) weigh ~10% of the tiny model's 8x64 tensors
        assert abs(c["bytes"] / written[name]["bytes"] - 1) < 0.15, (name, c["bytes"], written[name]["bytes"])
    actual = predict(b)
    for part in ("kv_cache", "row_stores", "activations"):
        assert fp.parts[part] == actual.parts[part], part
    # The graph files add what the plan doesn't count: TFLite an int64 zero point beside each
    # per-channel scale (3 MB on the tiny model's 262k-row LM head), ONNX a second copy of the
    # embedding's scales (GatherBlockQuantized and MatMulNBits want different shapes) and a 2 MB
    # graph. On this 20 MB model that is up to a fifth; at E2B scale it is about 4%.
    assert abs(fp.parts["weights"] / actual.parts["weights"] - 1) < 0.2


@pytest.mark.parametrize("fmt", ["litertlm", "onnx"])
def test_measured_run_agrees_with_prediction(fmt, bundle):
    r = profile(str(bundle("gemma3n_multimodal", fmt)), device="pi4-2gb", prompt_tokens=24, new_tokens=16)
    m, p = r["measured"], r["predicted"]
    assert len(m["samples"]) >= 5 and set(m["events"]) == {"loaded", "done"}
    assert abs(p["peak"] / m["peak_rss"] - 1) < 0.15, (p, m["peak_rss"])
    assert m["peak_pss"] <= m["peak_rss"]
    assert m["page_faults"]["minor"] > 0
    table = "per_layer_embeddings.bin" if fmt == "onnx" else "model.litertlm"
    resident = max(s["files"].get(table, 0) for s in m["samples"])
    assert 0 < resident < m["file_sizes"][table]  # memory-mapped: only touched pages are resident
    if fmt == "onnx":  # the PLE file alone: MADV_RANDOM keeps readahead from pulling in neighbours
        assert resident <= (24 + 16) * 2 * 4096, resident  # <= 2 pages per token (was ~30 with readahead)
    assert r["verdict"]["fits"]


def test_report_renders(bundle, tmp_path):
    html = tmp_path / "report.html"
    assert main(["profile", str(bundle("gemma3", "onnx")), "--device", "pi4-2gb", "--prompt-tokens", "16",
                 "--tokens", "8", "--html", str(html)]) == 0
    page = html.read_text()
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == 2  # the breakdown and the memory over time
    for png in pngs:
        assert base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n")
    assert "pi4-2gb" in page and "predicted peak" in page


def test_cli_verdicts_and_errors(capsys):
    assert main(["profile", "--preset", "gemma-3-270m", "--quant", "int4", "--device", "pi4-2gb", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["verdict"]["fits"] and r["predicted"]["engine"] == "interpreter"  # a Pi 4 has no LSE atomics
    assert main(["profile", "--preset", "gemma-3n-E4B", "--device", "pi4-2gb", "--json"]) == 0
    assert not json.loads(capsys.readouterr().out)["verdict"]["fits"]  # fp32 E4B on a 2 GB Pi
    assert main(["profile", "somewhere", "--preset", "gemma-3-270m"]) == 2
    assert "one of them" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["profile", "--preset", "gemma-3-270m", "--device", "pi3"])
