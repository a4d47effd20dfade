"""`edgepack synth`: the real layout (checked against shared/reference/gemma3n.md's accounting and
against transformers loading the result), streamed writing, finite activations, and export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from edgepack.converters.synth import layout


def _params(shapes, prefix: str, contains: str = "") -> float:
    return sum(math.prod(s) for k, s in shapes.items() if k.startswith(prefix) and contains in k) / 1e9


@pytest.mark.parametrize("preset,layers,ple,core", [
    # gemma3n.md: E2B = 0.537B embedding + 2.013B PLE + 1.905B core; E4B = 0.537B + 2.349B + 3.980B
    ("gemma-3n-E2B", 30, 2.013, 1.905),
    ("gemma-3n-E4B", 35, 2.349, 3.980),
])
def test_gemma3n_layout_matches_the_reference_accounting(preset, layers, ple, core):
    config, shapes = layout(preset)
    text = "model.language_model."
    assert config["architectures"] == ["Gemma3nForConditionalGeneration"]
    assert shapes[text + "embed_tokens.weight"] == (262_400, 2048)
    assert shapes[text + "embed_tokens_per_layer.weight"] == (262_144, layers * 256)
    assert shapes[text + "per_layer_model_projection.weight"] == (layers * 256, 2048)
    emb = _params(shapes, text + "embed_tokens.")
    table = _params(shapes, text + "embed_tokens_per_layer.")
    assert round(emb, 3) == 0.537 and round(table, 3) == ple
    assert abs(_params(shapes, text) - emb - table - core) < 0.0015
    # KV-shared layers keep their (unused) K/V projections, as the real checkpoints do
    assert shapes[text + f"layers.{layers - 1}.self_attn.k_proj.weight"] == (512, 2048)
    assert any(k.startswith("model.audio_tower.") for k in shapes)
    assert not any(k.startswith("model.vision_tower.") for k in shapes)


@pytest.fixture(scope="module")
def synth_270m(tmp_path_factory):
    """Written by `edgepack synth` as a user runs it, whose stderr holds only edgepack's lines."""
    from test_cli_output import edgepack, foreign_lines

    out = tmp_path_factory.mktemp("synth") / "g270"
    proc = edgepack("synth", "--preset", "gemma-3-270m", "--seed", "0", "-o", str(out))
    assert foreign_lines(proc.stderr) == [], proc.stderr
    assert proc.stderr.splitlines()[-1] == f"wrote {out}"
    return out


def test_synth_checkpoint_loads_in_transformers_with_finite_activations(synth_270m):
    from transformers import AutoModelForCausalLM

    index = json.loads((synth_270m / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == ["model-00001-of-00001.safetensors"]
    model, info = AutoModelForCausalLM.from_pretrained(str(synth_270m), dtype=torch.float32,
                                                       output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        out = model(torch.tensor([[2, 818, 5279, 529, 7001, 563]]), output_hidden_states=True)
    rms = [float(h.pow(2).mean().sqrt()) for h in out.hidden_states]
    assert all(np.isfinite(rms)) and max(rms) < 1e3, rms
    assert torch.isfinite(out.logits).all() and out.logits.std() > 0


def test_synth_checkpoint_exports_and_runs(synth_270m, tmp_path):
    from edgepack.converters.export import ExportOptions, export
    from edgepack.runtime import Generator

    b = export(synth_270m, tmp_path / "b", ExportOptions(format="onnx", max_context=64, prefill_len=8),
               log=lambda m: None)
    gen = Generator(b)
    steps = []
    list(gen.generate_ids(gen.encode("Hello"), 4, on_step=steps.append))
    assert steps and all(np.isfinite(s.logits).all() for s in steps)


def test_unknown_preset(capsys, tmp_path):
    from edgepack.cli import main

    with pytest.raises(SystemExit):
        main(["synth", "--preset", "gemma-9", "-o", str(tmp_path / "x")])
    assert "invalid choice" in capsys.readouterr().err
