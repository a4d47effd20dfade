"""The planner (converters/planner.py) for each family, format and recipe, against what the
checkpoint's config says by hand; and the manifest as the plan's written form: what export writes
reads back into the same types, and a manifest from before rings still loads."""

from __future__ import annotations

import copy
import json

import pytest

from checkpoints import SLIDING, gemma3n_text_config
from edgepack.converters import families, quant_plan, recipes
from edgepack.converters.planner import plan_export
from edgepack.errors import EdgepackError
from edgepack.plan import BundlePlan

PLE = "model.embed_tokens_per_layer.weight"


def gemma3_config() -> dict:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                            num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=8,
                            query_pre_attn_scalar=16, max_position_embeddings=4096).to_dict()


CONFIGS = {"gemma3": gemma3_config, "gemma3n": lambda: gemma3n_text_config().to_dict()}


@pytest.mark.parametrize("fmt", ["litertlm", "onnx"])
@pytest.mark.parametrize("quant", ["none", *recipes.named()])
@pytest.mark.parametrize("family", ["gemma3", "gemma3n"])
def test_plan_follows_the_config_and_the_recipe(family, quant, fmt):
    hf = CONFIGS[family]()
    recipe = recipes.load(quant)
    p = plan_export(families.get(family), hf, recipe, fmt, 64, 8)
    g, n = p.graph, hf["num_hidden_layers"]

    owners = n - hf.get("num_kv_shared_layers", 0)  # KV-shared layers read an earlier layer's cache
    assert g.cache_layers == list(range(owners))
    chunk = 8 if fmt == "litertlm" else 1
    ring = hf["sliding_window"] + chunk - 1  # a sliding layer keeps its window plus one call's K/V
    assert g.group_query == (fmt == "onnx" and family == "gemma3")
    if g.group_query:  # onnxruntime's windowed cache: its window and a quarter more
        ring = hf["sliding_window"] + hf["sliding_window"] // 4
    assert g.cache_lengths == [ring if hf["layer_types"][i] == SLIDING else 64 for i in range(owners)]
    assert g.prefill_lengths == ([8] if fmt == "litertlm" else [])
    assert (g.num_kv_heads, g.head_dim, g.vocab_size) == (hf["num_key_value_heads"], hf["head_dim"], hf["vocab_size"])

    # Gemma 3n keeps its per-layer table out of every graph, and its embedding table out of the
    # .litertlm's main graph (LiteRT-LM runs an embedder of its own)
    tables = {"gemma3": set(), "gemma3n": {"per_layer_embeddings"} | ({"embeddings"} if fmt == "litertlm" else set())}
    assert set(p.tables) == tables[family]
    assert g.inputs == ("embeddings" if "embeddings" in p.tables else "tokens")

    matrices = {name for name, w in p.decoder.named_parameters() if w.dim() == 2}
    want = matrices | ({PLE} if family == "gemma3n" else set())
    head_apart = "lm_head" in recipe.components and "embeddings" in p.tables
    assert {k for k, t in p.tensors.items() if len(t.shape) == 2} == want | ({quant_plan.LM_HEAD} if head_apart else set())
    for name, t in p.tensors.items():
        component = recipe.component_of(name)
        if name == quant_plan.LM_HEAD or (name == quant_plan.EMBEDDING and "lm_head" in recipe.components
                                           and not head_apart):
            component = "lm_head"  # a table stored once is stored as the head reads it, whole
        expected = recipe.components.get(component)
        if expected is None or expected.bits == 32:
            assert t.bits == 32, name
        else:
            assert t.bits == expected.bits or t.how.startswith("float ("), (name, t)
    if quant == "none":
        assert not p.quantized and all(t.bits == 32 for t in p.tensors.values())


def test_plan_refuses_what_the_model_cannot_do():
    family, hf = families.get("gemma3n"), gemma3n_text_config().to_dict()
    for context, prefill, needle in [(8192, 8, "4096 positions"), (64, 65, "--prefill-len"),
                                     (1, 1, "--max-context"), (10**9, 8, "--max-context")]:
        with pytest.raises(EdgepackError, match=needle):
            plan_export(family, hf, recipes.NONE, "onnx", context, prefill)
    bad = hf | {"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e6}}}
    with pytest.raises(EdgepackError, match="RoPE type 'yarn'"):
        plan_export(family, bad, recipes.NONE, "onnx", 64, 8)


@pytest.mark.parametrize("fmt", ["litertlm", "onnx"])
def test_manifest_reads_back_into_the_plan_it_was_written_from(fmt, bundle):
    folder = bundle("gemma3n_multimodal", fmt)
    raw = json.loads((folder / "manifest.json").read_text())
    p = BundlePlan.from_manifest(raw)
    assert p.to_manifest() == raw
    assert BundlePlan.from_manifest(p.to_manifest()) == p


def test_manifest_written_before_rings_still_loads(bundle):
    raw = json.loads((bundle("gemma3", "onnx") / "manifest.json").read_text())
    old = copy.deepcopy(raw)
    del old["graph"]["cache_lengths"]  # the release before sliding-window rings
    p = BundlePlan.from_manifest(old)
    assert p.graph.cache_lengths == [raw["max_context"]] * len(raw["graph"]["cache_layers"])
