"""`edgepack bench` reports every engine it ran, with the fields the docs promise (no timing
assertions: tests check behaviour, benchmarks measure)."""

from __future__ import annotations

import json


def test_bench_reports_edgepack_and_litert_lm(bundle, capsys):
    from edgepack.cli import main

    folder = bundle("gemma3n_multimodal", "litertlm")
    assert main(["bench", str(folder), "--prefill", "20", "--decode", "8", "--threads", "2", "--runs", "2",
                 "--compare", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threads"] == 2 and report["prefill_tokens"] == 20 and report["decode_tokens"] == 8
    assert report["runs"] == 2
    assert report["context"] == json.loads((folder / "manifest.json").read_text())["max_context"]
    assert set(report["engines"]) == {"edgepack", "litert-lm"}
    for engine in report["engines"].values():
        # each engine's own count of the tokens it prefilled and decoded (LiteRT-LM's from its benchmark)
        assert (engine["prefilled"], engine["decoded"]) == (20, 8)
        for key in ("load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mib"):
            low, high = engine["spread"][key]
            assert 0 < low <= engine[key] <= high, (engine, key)  # the median lies within its runs
    assert len(report["load_average"]["before"]) == 3
    # a safetensors source: no GGUF for llama.cpp, no onnxruntime-genai build; each says why
    assert set(report["skipped"]) == {"llama.cpp", "onnxruntime-genai"}
    assert "GGUF" in report["skipped"]["llama.cpp"]
    roofline = report["roofline"]
    assert roofline["read_bandwidth_gb_s"] > 0 and roofline["decode_tok_s_limit"] > 0


def test_bench_refuses_more_tokens_than_the_context(bundle, capsys):
    from edgepack.cli import main

    assert main(["bench", str(bundle("gemma3", "onnx")), "--prefill", "60", "--decode", "10"]) == 2
    assert "exceeds the bundle's context (64)" in capsys.readouterr().err


def test_a_recipe_file_is_compared_with_the_onnxruntime_genai_build_of_its_bit_width():
    from edgepack.bench import peer_bits
    from edgepack.plan import Precision

    def precision(name, attention):
        return Precision("quantized", name, {"attention": {"precisions": attention}})

    assert peer_bits(precision("int4", ["int4 block 32", "int8 block 32"])) == "int4"  # named: by its name
    assert peer_bits(precision("int4-head4", ["int4 block 32"])) == "int4"
    assert peer_bits(precision("int4-at-ort-genai-size", ["int4 block 32"])) == "int4"  # the benchmark recipe
    assert peer_bits(precision("mine", ["int8 block 32"])) == "int8"
    assert peer_bits(precision("mixed", ["int4 block 32", "int8 block 32"])) is None  # no build like it
    assert peer_bits(Precision("fp32", "none", {})) is None
