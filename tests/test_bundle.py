"""The bundle format: manifest against the files, PLE kept out of the graph, KV sharing honoured,
atomic export, the Python API's streaming, the chat template against transformers'."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from edgepack import contract
from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError


def test_inspect_json_lists_every_file_with_its_sha256(bundle, capsys):
    from edgepack.cli import main

    folder = bundle("gemma3n_causal", "onnx")
    assert main(["inspect", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    on_disk = sorted(p.name for p in folder.iterdir() if p.name != "manifest.json")
    assert sorted(f["path"] for f in info["files"]) == on_disk
    for f in info["files"]:
        data = (folder / f["path"]).read_bytes()
        assert f["size"] == len(data)
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["checksums"] == "verified" and info["family"] == "gemma3n"


def test_per_layer_table_lives_outside_the_main_graph(bundle, checkpoint):
    """The PLE table is a memory-mapped row store, byte-identical to the checkpoint's table, and no
    constant of that size exists in the decoder graph (TFLite) or its initializers (ONNX)."""
    import onnx
    from ai_edge_litert import schema_py_generated as tfl
    from safetensors.torch import load_file

    table = load_file(str(checkpoint("gemma3n_multimodal") / "model.safetensors"))[
        "model.language_model.embed_tokens_per_layer.weight"].float().numpy()
    for fmt in ("litertlm", "onnx"):
        b = Bundle(bundle("gemma3n_multimodal", fmt))
        spec = b.manifest["row_stores"]["per_layer_embeddings"]
        stored = np.memmap(b.file(spec["file"]), np.float32, "r", spec["offset"], tuple(spec["shape"]))
        np.testing.assert_array_equal(stored, table)
    onnx_model = onnx.load(str(bundle("gemma3n_multimodal", "onnx") / "model.onnx"), load_external_data=False)
    assert all(tuple(i.dims) != table.shape for i in onnx_model.graph.initializer)
    b = Bundle(bundle("gemma3n_multimodal", "litertlm"))
    main = next(s for s in b.manifest["graph"]["sections"] if s["model_type"] == "tf_lite_prefill_decode")
    blob = b.file("model.litertlm").read_bytes()[main["offset"]:main["offset"] + main["size"]]
    model = tfl.Model.GetRootAsModel(blob, 0)
    sizes = {model.Buffers(i).Size() or model.Buffers(i).DataLength() for i in range(model.BuffersLength())}
    assert table.nbytes not in sizes


def test_only_cache_owning_layers_have_cache_tensors(bundle):
    """7 layers with the last 3 KV-shared: caches for layers 0-3 only, in both formats."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    b = Bundle(bundle("gemma3n_multimodal", "litertlm"))
    assert b.manifest["graph"]["cache_layers"] == [0, 1, 2, 3]
    main = next(s for s in b.manifest["graph"]["sections"] if s["model_type"] == "tf_lite_prefill_decode")
    with open(b.file("model.litertlm"), "rb") as f:
        f.seek(main["offset"])
        interp = Interpreter(model_content=f.read(main["size"]))
    sigs = interp.get_signature_list()
    assert set(sigs) == {"prefill_8", "decode"}
    expected = {contract.k_cache_name(i) for i in range(4)} | {contract.v_cache_name(i) for i in range(4)}
    decode_inputs = set(sigs["decode"]["inputs"])
    assert {n for n in decode_inputs if n.startswith("kv_cache")} == expected
    assert decode_inputs - expected == {"embeddings", "per_layer_embeddings", "input_pos", "mask"}
    assert set(sigs["decode"]["outputs"]) == expected | {"logits"}
    onnx_inputs = {i.name for i in onnx.load(str(bundle("gemma3n_multimodal", "onnx") / "model.onnx"),
                                             load_external_data=False).graph.input}
    assert {n for n in onnx_inputs if n.startswith("kv_cache")} == expected


@pytest.mark.parametrize("fmt", ["litertlm", "onnx"])
def test_sliding_window_layers_keep_a_ring(fmt, bundle):
    """Tiny Gemma 3n (window 8, context 64, prefill graph 8; cache layers 0-3, layer 2 global): in
    the graph's own input shapes, the global layer's cache holds the context, the sliding-window
    layers' a ring: 8 + 8 - 1 slots in the TFLite graph, which attends after writing an 8-token
    chunk, and 8 in the ONNX graph, which attends to a chunk's own K/V apart from the cache."""
    b = Bundle(bundle("gemma3n_multimodal", fmt))
    window, context = b.manifest["model"]["config"]["sliding_window"], b.max_context
    assert (window, context, b.manifest["graph"]["prefill_lengths"]) == (8, 64, [8] if fmt == "litertlm" else [])
    ring = 8 + 8 - 1 if fmt == "litertlm" else 8
    want = {i: context if i == 2 else ring for i in range(4)}
    if fmt == "onnx":
        import onnx

        graph = onnx.load(str(b.file("model.onnx")), load_external_data=False).graph
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    else:
        from ai_edge_litert.interpreter import Interpreter

        main = next(s for s in b.manifest["graph"]["sections"] if s["model_type"] == "tf_lite_prefill_decode")
        with open(b.file("model.litertlm"), "rb") as f:
            f.seek(main["offset"])
            runner = Interpreter(model_content=f.read(main["size"])).get_signature_runner("decode")
        shapes = {n: list(d["shape"]) for n, d in runner.get_input_details().items()}
    for i, slots in want.items():
        assert shapes[contract.k_cache_name(i)] == [1, 2, slots, 16]  # [1, KV heads, slots, head dim]
        assert shapes[contract.v_cache_name(i)] == [1, 2, 16, slots]
    assert b.cache_bytes == 4 * sum(2 * 2 * 16 * n for n in want.values())


def test_failed_export_leaves_nothing(tmp_path, checkpoint, monkeypatch):
    from edgepack.converters import export as export_mod
    from edgepack.converters import onnx_export

    def boom(model, cfg, context, lengths, out, per_layer, multimodal_offset=None):
        out.write_bytes(b"half a model")
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx_export, "export", boom)
    target = tmp_path / "b"
    with pytest.raises(RuntimeError):
        export_mod.export(checkpoint("gemma3"), target, export_mod.ExportOptions(format="onnx", max_context=64, prefill_len=8))
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging folder


def test_existing_bundle_is_not_replaced_without_force(tmp_path, bundle, checkpoint):
    import shutil

    from edgepack.converters.export import ExportOptions, export

    target = tmp_path / "b"
    shutil.copytree(bundle("gemma3", "onnx"), target)
    with pytest.raises(EdgepackError, match="already exists"):
        export(checkpoint("gemma3"), target, ExportOptions(format="onnx", max_context=64, prefill_len=8))
    Bundle(target).verify()


def test_stream_pieces_concatenate_to_the_decoded_text(bundle):
    from edgepack.runtime import Generator

    gen = Generator(bundle("gemma3", "litertlm"))
    pieces = list(gen.stream("The capital of France is", max_new_tokens=12))
    ids = list(gen.generate_ids(gen.encode("The capital of France is"), 12))
    assert len(pieces) >= 2
    assert "".join(pieces) == gen.tokenizer.decode(ids, skip_special_tokens=True)


def test_chat_template_renders_like_transformers(bundle, checkpoint):
    from transformers import PreTrainedTokenizerFast

    from edgepack.runtime import Generator

    folder = checkpoint("gemma3n_causal")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token="<bos>",
                                 eos_token="<eos>")
    hf.chat_template = (folder / "chat_template.jinja").read_text()
    messages = [{"role": "user", "content": "Name a planet."}]
    want = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    gen = Generator(bundle("gemma3n_causal", "onnx"))
    assert gen.encode("Name a planet.", chat=True) == list(want)
    assert 106 in gen.stop_ids  # <end_of_turn> ends a chat reply


def test_killed_export_leaves_no_bundle_and_is_cleaned_up(tmp_path, checkpoint, capsys):
    """SIGKILL in the middle of an export: the target is not a bundle; the next export to the same
    target removes the dead export's staging folder."""
    import signal
    import subprocess
    import sys
    import time

    from edgepack.cli import main

    target = tmp_path / "b"
    cmd = [sys.executable, "-m", "edgepack.cli", "export", str(checkpoint("gemma3")), "--format", "onnx",
           "-o", str(target), "--max-context", "64", "--prefill-len", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".b.partial-*")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # well into lowering
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".b.partial-*")), "the export was killed before it staged anything"
    assert not target.exists()
    assert main(["inspect", str(target)]) == 2
    capsys.readouterr()
    assert main(["export", str(checkpoint("gemma3")), "--format", "onnx", "-o", str(target),
                 "--max-context", "64", "--prefill-len", "8"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    Bundle(target).verify()


@pytest.mark.parametrize("name", ["gemma3", "gemma3n_causal"])  # lowered whole; a piece at a time
def test_a_kept_lowering_exports_the_same_bundle(tmp_path, checkpoint, kept_lowerings, exported_from_scratch, name):
    """`--keep-lowered`: an export that starts from an earlier export's float lowering (Gemma 3n:
    its float pieces) writes, section for section, the bundle a fresh lowering writes
    (litert-lm-builder's header holds a timestamp and a random id, so the files differ there). The
    fresh one is the run's bundle of this checkpoint that lowered it first (conftest.py)."""
    from edgepack.converters.export import ExportOptions, export
    from edgepack.converters.litertlm_export import read_sections
    from checkpoints import TINY_CONTEXT, TINY_PREFILL

    def exported(quant: str, keep, out) -> list[str]:
        said: list[str] = []
        export(checkpoint(name), out, ExportOptions("litertlm", quant, TINY_CONTEXT, TINY_PREFILL, keep_lowered=keep),
               log=said.append)
        return said

    fresh = exported_from_scratch(name)
    if fresh is not None:  # its recipe from its manifest: a name like "int4-head4" has dashes of its own
        quant = Bundle(fresh).plan.precision.quantization
    else:  # the other worker's is still being written: lower one here
        fresh, quant = tmp_path / "fresh", "int8"
        assert not any("reused from" in line for line in exported(quant, None, fresh))
    said = exported(quant, kept_lowerings, tmp_path / "reused")
    # nothing lowered this time: the whole graph, or every piece, came from the kept lowering
    assert any(line.endswith(f"(reused from {kept_lowerings})") or f"(every piece reused from {kept_lowerings})" in line
               for line in said), said
    sections = read_sections(fresh / "model.litertlm")
    assert sections == read_sections(tmp_path / "reused" / "model.litertlm")
    first = min(s["offset"] for s in sections)
    assert (fresh / "model.litertlm").read_bytes()[first:] == (tmp_path / "reused" / "model.litertlm").read_bytes()[first:]


def test_bundles_with_one_tokenizer_share_its_parse(bundle, tmp_path):
    import shutil

    from edgepack.runtime import Generator

    onnx, litertlm = bundle("gemma3", "onnx"), bundle("gemma3", "litertlm")
    first = Generator(onnx)
    assert Generator(litertlm).tokenizer is first.tokenizer  # the same file (sha256), parsed once
    # Unverified, the file may not be what its manifest says: it is parsed, and read as it is.
    altered = shutil.copytree(onnx, tmp_path / "altered")
    text = (altered / "tokenizer.json").read_text()
    (altered / "tokenizer.json").write_text(text.replace('"<pad>"', '"<dap>"', 1))  # the size holds
    loose = Generator(altered, verify=False)
    assert loose.tokenizer is not first.tokenizer
    assert loose.tokenizer.token_to_id("<dap>") is not None and first.tokenizer.token_to_id("<dap>") is None
    with pytest.raises(EdgepackError, match="sha256"):
        Generator(altered)


@pytest.mark.parametrize("fmt", ["onnx", "litertlm"])
def test_a_prompt_that_continues_the_last_run_prefills_only_the_rest(bundle, fmt):
    """A prompt that starts with the last run's tokens (a chat's next turn) keeps their K/V and
    prefills only the rest, with the logits of a run from an empty cache. Past the sliding layers'
    short caches only when they still read as a fresh run's: the .litertlm's rings (8 + 8 - 1
    slots) when at most ring - window tokens (7) were written past the point where the prompt parts
    from them; the ONNX graph's windowed caches (8 + 2 rows, moved every 3 tokens) when their rows
    have not moved since that point."""
    from edgepack.runtime import Generator

    gen = Generator(bundle("gemma3", fmt))

    def run(ids, reuse=True, n=3):
        gen.reuse_cache = reuse
        steps = []
        list(gen.generate_ids(ids, n, on_step=steps.append))
        return steps, gen.last_run.reused_tokens

    def same_as_fresh(ids, reused_steps):
        fresh, none = run(ids, reuse=False)
        assert none == 0 and [s.token for s in reused_steps] == [s.token for s in fresh]
        for a, b in zip(reused_steps, fresh):
            np.testing.assert_allclose(a.logits, b.logits, rtol=1e-4, atol=1e-4)

    more = gen.tokenizer.encode(" and then the dragon slept")
    run(gen.encode("Once upon a time, in a land far away, there lived"))
    held = list(gen.engine.held)
    assert len(held) > gen.engine.ring  # past the rings
    steps, reused = run(held + more)
    assert reused == len(held)
    same_as_fresh(held + more, steps)

    run(held + more)
    held = list(gen.engine.held)
    steps, reused = run(held[:-3] + more)  # parts 3 tokens before the end, the rings wrapped
    assert reused == (len(held) - 3 if fmt == "litertlm" else 0)
    same_as_fresh(held[:-3] + more, steps)

    run(held + more)
    steps, reused = run(held[:3] + more + more)  # parts early, and the rings have wrapped
    assert reused == 0
    same_as_fresh(held[:3] + more + more, steps)

    if fmt == "onnx":
        rows, window = gen.engine.ring, gen.engine.bundle.plan.model.setting("sliding_window")
        for k in (1, 2):  # parts k tokens before the end
            run(held + more)
            total = len(gen.engine.held)
            assert total > rows  # the windowed caches have moved their rows
            back = gen.engine.held[:-k] + more
            steps, reused = run(back)
            moved = contract.window_rows(total - k, rows, window) != contract.window_rows(total, rows, window) - k
            assert reused == (0 if moved else total - k)
            same_as_fresh(back, steps)

    first = gen.encode("Hi")
    run(first, n=2)
    steps, reused = run(first + more[:2])  # parts at the generated token, no ring wrapped
    assert reused == len(first)
    same_as_fresh(first + more[:2], steps)
