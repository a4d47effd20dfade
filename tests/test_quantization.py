"""Quantized bundles: recipes, GGUF grids kept exactly, weights on their grids, engines agree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgepack.errors import EdgepackError
from edgepack.system import default_threads

PROMPT = "The quick brown fox"


def test_gguf_grids_transcode_exactly():
    """Every quantized type in the real 270M GGUF becomes codes/scales whose dequantization is
    gguf-py's own, bit for bit (Q4_K to float rounding of its zero point)."""
    import gguf

    from edgepack.converters.builtin import gemma_gguf
    from edgepack.converters.quantize import transcode_gguf

    reader = gguf.GGUFReader(str(gemma_gguf()))
    seen = {}
    for t in reader.tensors:
        if t.tensor_type.name in ("Q8_0", "Q5_0", "Q6_K", "Q4_K") and t.tensor_type.name not in seen:
            if t.name == "token_embd.weight":
                continue  # 168M weights: the same Q8_0 path as attn_v
            seen[t.tensor_type.name] = t
    assert set(seen) == {"Q8_0", "Q5_0", "Q6_K", "Q4_K"}
    for kind, t in seen.items():
        q = transcode_gguf(t)
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(q.shape)
        err = np.abs(q.dequantize() - ref).max()
        assert err <= (1e-6 * np.abs(ref).max() if kind == "Q4_K" else 0), (kind, err)
        assert q.bits == (4 if kind == "Q4_K" else 8) and q.how == f"exact from {kind}"


def test_source_grid_keep_holds_gguf_grids_and_requantize_rounds_them(tmp_path):
    """On the real 270M GGUF's own tensor types: `keep` holds each grid ONNX can hold exactly
    (Q4_K as 4-bit codes plus offsets, the 8-bit ones as 8 bits even where 4 are asked);
    `requantize` rounds every one to the recipe's bits and blocks, as a converter that dequantizes
    the GGUF first (onnxruntime-genai's builder) does."""
    from edgepack.converters import recipes, sources
    from edgepack.converters.builtin import gemma_gguf
    from edgepack.converters.quant_plan import decide

    src = sources.open_source(gemma_gguf())
    grids = {}
    for name, shape in src.shapes.items():
        grids.setdefault(src.storage(name), (name, shape))
    assert {"Q4_K", "Q8_0"} <= set(grids)
    plans = {}
    for grid in ("keep", "requantize"):
        f = tmp_path / f"{grid}.json"
        f.write_text(json.dumps({"source_grid": grid, "components": {c: {"bits": 4, "block": 32} for c in
                                                                     ("embedding", "attention", "mlp")}}))
        recipe = recipes.load(str(f))
        plans[grid] = {g: decide(n, tuple(s), recipe, "onnx", g) for g, (n, s) in grids.items() if len(s) == 2}
    assert plans["keep"]["Q4_K"].how == "exact from Q4_K" and plans["keep"]["Q4_K"].bits == 4
    assert plans["keep"]["Q8_0"].how == "exact from Q8_0" and plans["keep"]["Q8_0"].bits == 8
    for grid, plan in plans["requantize"].items():
        assert (plan.bits, plan.block, plan.how) == (4, 32, f"rounded from {grid}"), (grid, plan)


def test_recipes_load_and_reject_bad_files(tmp_path):
    from edgepack.converters import recipes

    assert {"int8", "int4"} <= set(recipes.named())
    int4 = recipes.load("int4")
    assert int4.precision_of("model.layers.3.mlp.down_proj.weight").bits == 4
    assert int4.precision_of("model.layers.3.per_layer_input_gate.weight").bits == 8  # Google keeps 8
    assert int4.precision_of("model.layers.3.input_layernorm.weight").bits == 32
    bad = [({"components": {"mlpp": {"bits": 4}}}, "unknown component"),
           ({"components": {"mlp": {"bits": 3}}}, "bits must be"),
           ({"components": {"mlp": {"bits": 4, "block": 48}}}, "block must be"),
           ({"components": {}, "source_grid": "x"}, "source_grid"),
           ({"components": {}, "sourcegrid": "keep"}, "unknown keys")]
    for raw, message in bad:
        f = tmp_path / "r.json"
        f.write_text(json.dumps(raw))
        with pytest.raises(EdgepackError, match=message):
            recipes.load(str(f))
    with pytest.raises(EdgepackError, match="unknown quantization"):
        recipes.load("int3")


def _ort_dequantize(b, scales, zp, bits: int, block: int) -> np.ndarray:
    """onnxruntime's MatMulNBits weight, from its contrib-op spec: B [N, blocks, bytes], codes
    low nibble first, value (code - zero_point) * scale; zero points uint8, packed like the codes
    ([N, ceil(blocks * bits / 8)]), 2^(bits-1) if absent."""
    n, blocks = b.shape[0], b.shape[1]
    codes = np.stack([b & 15, b >> 4], -1).reshape(n, blocks, block) if bits == 4 else b
    if zp is None:
        zp = np.full((n, blocks), 2 ** (bits - 1))
    else:
        assert zp.dtype == np.uint8  # onnxruntime's fast kernels take no float zero points
        zp = (np.stack([zp & 15, zp >> 4], -1).reshape(n, -1) if bits == 4 else zp)[:, :blocks]
    codes, zp = codes.astype(np.float32), zp.astype(np.float32)
    return ((codes - zp[..., None]) * scales.reshape(n, blocks)[..., None]).reshape(n, blocks * block)


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_onnx_weights_sit_on_their_grid(quant, bundle, checkpoint):
    """Each MatMulNBits weight, read back from the bundle, is the checkpoint's tensor rounded to
    the nearest point of its grid (within half a step), and the report says what it did."""
    import onnx
    from onnx import numpy_helper

    from edgepack.converters import sources
    from edgepack.runtime.generate import Generator

    folder = bundle("gemma3n_causal", "onnx", quant)
    src = sources.open_source(checkpoint("gemma3n_causal"))
    model = onnx.load(str(folder / "model.onnx"))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    report = {t["tensor"]: t for t in json.loads((folder / "quantization.json").read_text())["tensors"]}
    checked = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        a = {x.name: x.i for x in node.attribute}
        b, scales = init[node.input[1]], init[node.input[2]]
        zp = init[node.input[3]] if len(node.input) > 3 and node.input[3] else None
        w = _ort_dequantize(b, scales, zp, a["bits"], a["block_size"])
        name = next(n for n in report if node.input[1].endswith("." + n.removesuffix(".weight") + ".qweight"))
        ref = src.read(name)
        step = np.repeat(scales.reshape(w.shape[0], -1), a["block_size"], axis=1)
        assert np.all(np.abs(w - ref) <= step / 2 + 1e-6), name
        assert report[name]["how"] == "rounded" and report[name]["stored"].startswith(f"int{a['bits']}")
        checked += 1
    assert checked >= 20
    m = json.loads((folder / "manifest.json").read_text())
    assert m["precision"]["quantization"] == quant and m["precision"]["components"]["mlp"]["rounded"] > 0
    assert m["row_stores"]["per_layer_embeddings"]["dtype"] == quant
    gen = Generator(folder)
    steps = []
    list(gen.generate_ids(gen.encode(PROMPT), max_new_tokens=8, on_step=steps.append))
    assert steps and all(np.isfinite(s.logits).all() for s in steps)


@pytest.mark.parametrize("name,quant", [(n, q) for n in ("gemma3", "gemma3n_causal") for q in ("int8", "int4")]
                         + [("gemma3n_causal", "int4-head4")])
def test_litert_lm_runs_quantized_litertlm_like_edgepack(name, quant, bundle, tmp_path):
    """Google's engine loads the quantized .litertlm unchanged and its greedy tokens are ours, up to
    a near-tie that its fp16 activations may break the other way."""
    import litert_lm
    from tokenizers import Tokenizer

    from edgepack.runtime.generate import Generator

    folder = bundle(name, "litertlm", quant)
    engine = litert_lm.Engine(str(folder / "model.litertlm"), backend=litert_lm.Backend.CPU(thread_count=default_threads()),
                              cache_dir=str(tmp_path))
    session = engine.create_session(apply_prompt_template=False, max_output_tokens=12,
                                    sampler_config=litert_lm.SamplerConfig(top_k=1))
    session.run_prefill([PROMPT])
    text = session.run_decode().texts[0]
    session.close()
    gen = Generator(folder)
    steps = []
    ids = list(gen.generate_ids(gen.encode(PROMPT), max_new_tokens=12, on_step=steps.append))
    sizes = {f["path"]: f["size"] for f in json.loads((folder / "manifest.json").read_text())["files"]}
    assert "quantization.json" in sizes
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    if text == tok.decode(ids, skip_special_tokens=False):
        return
    # LiteRT-LM's CPU executor runs fp16 activations, ours fp32: on a random tiny model whose top-2
    # logits are often within 0.01 of each other the two may part at a near-tie. They must agree
    # up to that step, and there LiteRT-LM's continuation must start with a token our logits rank
    # within 0.5 of the top. Compared as text: LiteRT-LM returns text, and re-encoding it may split
    # it into other tokens than the ones it generated (" famoso" -> " fam" + "oso").
    # LiteRT-LM's Python API hands text over as a C string: a generated NUL byte (token <0x00>)
    # ends it there. Ours is compared up to the same point.
    ours_text = tok.decode(ids, skip_special_tokens=False)
    if "\0" in ours_text and text == ours_text[:ours_text.index("\0")]:
        return
    spelled = [tok.decode(ids[:i + 1], skip_special_tokens=False) for i in range(len(ids))]
    part = next((i for i, ours in enumerate(spelled) if not text.startswith(ours)), None)
    if part is None:
        return  # our 12 tokens spell the start of LiteRT-LM's text: the same choices
    done = tok.decode(ids[:part], skip_special_tokens=False)
    rest = text[len(done):]
    assert text.startswith(done) and rest, f"LiteRT-LM stopped where we went on: {text!r} vs {tok.decode(ids)!r}"
    logits = steps[part].logits
    near = np.flatnonzero(logits >= logits.max() - 0.5)
    fits = [int(t) for t in near
            if rest.startswith(tok.decode(ids[:part] + [int(t)], skip_special_tokens=False)[len(done):] or "\0")]
    assert fits, (f"step {part}: LiteRT-LM went on with {rest!r}; none of our tokens within 0.5 of the top "
                  f"({len(near)}, ours {ids[part]}) starts that")


def test_a_4bit_lm_head_leaves_the_lookup_table_8bit(bundle, checkpoint):
    """int4-head4 on a Gemma 3n .litertlm: the main model's LM head is 4-bit in blocks of 32 (the
    TFLite schema's INT4 with blockwise scales), on that grid of the checkpoint's tied embedding;
    the embedder's lookup table, which the runtime memory-maps, stays int8 per row."""
    from ai_edge_litert import schema_py_generated as tfl
    from ai_edge_litert.tools import flatbuffer_utils as fb

    from edgepack.bundle import Bundle
    from edgepack.converters import sources

    b = Bundle(bundle("gemma3n_causal", "litertlm", "int4-head4"))
    assert b.manifest["row_stores"]["embeddings"]["dtype"] == "int8"
    report = {t["tensor"]: t for t in json.loads((b.path / "quantization.json").read_text())["tensors"]}
    assert report["lm_head.weight"]["stored"] == "int4 block 32" and report["lm_head.weight"]["component"] == "lm_head"
    assert report["model.embed_tokens.weight"]["stored"] == "int8 per-channel"
    src = sources.open_source(checkpoint("gemma3n_causal"))
    table = src.read("model.embed_tokens.weight").astype(np.float32)
    main = b.main_section
    with open(b.path / "model.litertlm", "rb") as f:
        f.seek(main.offset)
        model = fb.read_model_from_bytearray(bytearray(f.read(main.size)))
    heads = [(t, sg) for sg in model.subgraphs for t in sg.tensors if list(t.shape) == list(table.shape)]
    assert heads and all(t.type == tfl.TensorType.INT4 for t, _ in heads)
    head, sg = heads[0]
    q = head.quantization
    assert q.detailsType == tfl.QuantizationDetails.BlockwiseQuantization and q.details.blockSize == 32
    # codes: signed 4-bit, two to a byte, low nibble first; one float16 scale per block of 32
    packed = np.asarray(model.buffers[head.buffer].data, np.uint8)
    codes = np.stack([packed & 15, packed >> 4], -1).reshape(table.shape).astype(np.int8)
    codes = np.where(codes > 7, codes - 16, codes).astype(np.float32)
    scales_tensor = sg.tensors[q.details.scales]
    assert scales_tensor.type == tfl.TensorType.FLOAT16
    scales = np.frombuffer(bytes(model.buffers[scales_tensor.buffer].data), np.float16).astype(np.float32)
    step = np.repeat(scales.reshape(len(table), -1), 32, axis=1)
    # the converter folds the final softcap's 1/30 into the head (logits = 30 tanh(h W^T / 30))
    want = table / float(src.config["final_logit_softcapping"])
    assert np.all(np.abs(codes * step - want) <= step * (0.5 + 1e-3))


def _tflite_contents(path) -> dict:
    """Every tensor of a .tflite by name (shapes, type, quantization, bytes) and every operator (code,
    version, options, tensor names): what two files that should be the same model must share."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.read_model(str(path))
    out = {}
    for n, g in enumerate(model.subgraphs):
        name = [t.name for t in g.tensors]
        for t in g.tensors:
            q, data = t.quantization, model.buffers[t.buffer].data
            quant = None if q is None else (
                None if q.scale is None else np.asarray(q.scale).tobytes(),
                None if q.zeroPoint is None else np.asarray(q.zeroPoint).tolist(),
                q.quantizedDimension, q.detailsType,
                None if q.details is None else (name[q.details.scales], q.details.zeroPoints, q.details.blockSize))
            sig = None if t.shapeSignature is None else list(t.shapeSignature)
            out[n, t.name] = (list(t.shape), sig, t.type, quant, None if data is None else bytes(data))
        for i, op in enumerate(g.operators):
            code = model.operatorCodes[op.opcodeIndex]
            options = {k: np.asarray(v).tolist() for k, v in vars(op.builtinOptions).items()} if op.builtinOptions else None
            out[n, i] = (code.builtinCode, code.version, op.builtinOptionsType, options,
                         [name[k] if k >= 0 else None for k in op.inputs], [name[k] for k in op.outputs])
    return out


@pytest.mark.parametrize("quant", ["int4", "int4-head4"])
def test_lm_head_rounded_in_row_blocks_is_what_ai_edge_quantizer_writes(quant, checkpoint, tmp_path):
    """The Gemma 3n .litertlm exit piece as edgepack makes it (converted with 64 rows of the tied
    embedding standing in for the LM head, then every row rounded in a block at a time: the float
    head whole costs E2B's export GBs) is tensor for tensor and byte for byte the piece converted
    with the whole head and quantized by ai-edge-quantizer: int8 per channel (int4), int4 in blocks
    of 32 with float16 scales (int4-head4). (At full size the converter no longer folds the
    softcap's 1/30 into a head that large and keeps it as a MUL after the head; the stand-in
    piece always has it folded, as here: docs/full-size.md compares the two at E2B size.)"""
    from edgepack.converters import litertlm_pieces, quant_plan, recipes, sources, tflite_quant
    from edgepack.converters.decoder import load_weights
    from edgepack.converters.planner import plan_export

    src = sources.open_source(checkpoint("gemma3n_causal"))
    p = plan_export(src.family, src.config, recipes.load(quant), "litertlm", 64, 8, src.storage)
    model, cfg, lengths = p.decoder, p.config, p.graph.cache_lengths
    plans = quant_plan.main_model_plans(p.tensors)
    spec = p.family.litertlm_pieces(model, cfg, p.prefill_len, lengths)[-1]  # the exit
    ours, theirs = tmp_path / "ours.tflite", tmp_path / "theirs.tflite"
    head = plans[quant_plan.EMBEDDING]
    load_weights(model, src, only=set(spec.params) - {quant_plan.EMBEDDING}, progress=None)
    litertlm_pieces.convert_exit(spec, cfg, src, head, p.prefill_len, lengths, p.max_context, ours)
    load_weights(model, src, only=set(spec.params), progress=None)
    litertlm_pieces.convert(spec, cfg, p.prefill_len, lengths, p.max_context, theirs)
    weights = {quant_plan.EMBEDDING: dict(model.named_parameters())[quant_plan.EMBEDDING].detach().numpy()}
    assert tflite_quant.quantize_file(theirs, plans, weights) == 1
    a, b = _tflite_contents(ours), _tflite_contents(theirs)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key
    assert head.precision() == ("int4 block 32" if quant == "int4-head4" else "int8 per-channel")
    assert cfg.vocab_size > litertlm_pieces.STAND_IN_ROWS


def test_quantized_ple_rows_match_the_litert_interpreter(bundle, tmp_path):
    """The int4 per-layer table our runtime memory-maps from the .litertlm dequantizes to exactly
    what the LiteRT interpreter computes running that section's graph."""
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.bundle import Bundle
    from edgepack.runtime.row_store import RowStore

    b = Bundle(bundle("gemma3n_causal", "litertlm", "int4"))
    spec = b.plan.row_stores["per_layer_embeddings"]
    assert spec.dtype == "int4"
    sec = next(s for s in b.manifest["graph"]["sections"] if s["model_type"] == "tf_lite_per_layer_embedder")
    with open(b.path / "model.litertlm", "rb") as f:
        f.seek(sec["offset"])
        (tmp_path / "ple.tflite").write_bytes(f.read(sec["size"]))
    run = Interpreter(model_path=str(tmp_path / "ple.tflite")).get_signature_runner("per_layer_embedder")
    store = RowStore(b.file(spec.file), spec)
    ids = np.array([0, 7, 2, 262_143, 300_000])
    want = np.stack([run(token_ids=np.array([[i]], np.int32))["embeddings"].reshape(-1) for i in ids])
    np.testing.assert_array_equal(store.gather(ids), want)  # prefill: one vectorized read

    # decode: a row at a time into the store's own buffers, with and without a hot-row cache
    # small enough (3 rows) to evict. Rows asked for: 0 7 2 0 262143 0 7 2 0 (300,000 reads row 0);
    # LRU over 3 slots: hits at the 4th, 6th and 9th, the rest misses
    row_bytes = 4 * store.cols
    for cache_mb in (0.0, 3 * row_bytes / 2**20):
        one = RowStore(b.file(spec.file), spec, cache_mb=cache_mb)
        for k in [0, 1, 2, 0, 3, 4, 1, 2, 4]:
            np.testing.assert_array_equal(one.gather(ids[k:k + 1])[0], want[k])
        if cache_mb:
            assert one.cache.capacity == 3 and len(one.cache.slots) == 3
            assert (one.cache.hits, one.cache.misses) == (3, 6)


@pytest.mark.parametrize("bits", [4, 8, 32])
def test_decoding_ple_rows_allocates_nothing(bits, tmp_path):
    """After the first token, gathering a row (with or without the hot-row cache) allocates no
    numpy data. tracemalloc sees numpy's buffers, its internal cast/broadcast buffers (32 KiB)
    included; rows here are E4B-wide x 8 (71,680 columns, codes alone 70 KiB), and the bound
    leaves room only for the Python objects of array views and the cache's bookkeeping."""
    import tracemalloc

    from edgepack.converters import row_tables
    from edgepack.converters.quant_plan import TensorPlan
    from edgepack.runtime.row_store import RowStore

    rows, cols = 64, 71_680
    table = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    plan = TensorPlan("ple", "per_layer_embeddings", (rows, cols), "F32", bits, 32 if bits < 32 else 0, "rounded")
    spec = row_tables.write(tmp_path / "ple.bin", [table[:40], table[40:]], plan, 16.0)
    ids = np.random.default_rng(1).integers(0, rows, 200)
    for cache_mb in (0.0, 8 * 4 * cols / 2**20):
        store = RowStore(tmp_path / spec.file, spec, cache_mb=cache_mb)
        want = store.gather(ids)
        store.gather(ids[:1])
        tracemalloc.start()
        for i in range(len(ids)):
            store.gather(ids[i:i + 1])
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 8192, (cache_mb, peak)
        for i in range(len(ids)):
            np.testing.assert_array_equal(store.gather(ids[i:i + 1])[0], want[i])
