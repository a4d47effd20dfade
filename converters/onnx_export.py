"""ONNX lowering (torch.onnx dynamo exporter) for onnxruntime.

One graph with a dynamic sequence length serves prefill chunks and single-token decode. Inputs
keep LiteRT-LM's names (`tokens`, `per_layer_embeddings`, `input_pos`, `mask`, `kv_cache_k_i` ...).
Outputs are `logits` and either the updated caches as `present_k_i` / `present_v_i`, written in
place by onnxruntime's GroupQueryAttention into the buffers the runtime binds to both names
(Gemma 3), or the chunk's K/V as `kv_slice_k_i` / `kv_slice_v_i`, which the runtime writes into its
cache itself (Gemma 3n; see blocks.KVCache).
Weights go to external data (`model.onnx.data`) so models over 2 GB work.
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import torch

from edgepack import contract
from edgepack.converters import onnx_contrib, onnx_quant


STACK_TRACE = "pkg.torch.onnx.stack_trace"
TRANSLATIONS = onnx_quant.TRANSLATIONS | onnx_contrib.TRANSLATIONS


class _FlatSignature(torch.nn.Module):
    """Positional, flat inputs so the ONNX graph gets exactly the contract's names."""

    def __init__(self, model, cache_layers: list[int], per_layer: bool, multimodal_offset: int | None):
        super().__init__()
        self.model, self.cache_layers, self.per_layer = model, cache_layers, per_layer
        self.group_query = model.cache.backend == "group_query"
        self.multimodal_offset = multimodal_offset

    def forward(self, tokens, *rest):
        if self.multimodal_offset is not None:
            multimodal, *rest = rest
        if self.per_layer:
            per_layer_embeddings, input_pos, mask, *caches = rest
        else:
            input_pos, mask, *caches = rest
        kv = {}
        for j, i in enumerate(self.cache_layers):
            kv[f"k_{i}"], kv[f"v_{i}"] = caches[2 * j], caches[2 * j + 1]
        if self.multimodal_offset is not None:
            # as transformers' Gemma3nModel: ids from the multimodal offset on take the embedding a
            # multimodal embedder gives them (the runtime's, audio soft tokens included)
            x = torch.where((tokens >= self.multimodal_offset)[..., None], multimodal, self.model.embed(tokens))
            out = self.model(per_layer_embeddings, input_pos, mask, kv, embeddings=x)
        elif self.per_layer:
            out = self.model(per_layer_embeddings, input_pos, mask, kv, tokens=tokens)
        else:
            out = self.model(tokens, input_pos, mask, kv)
        return tuple(out[n] for n in output_names(self.cache_layers, self.group_query))


def output_names(cache_layers: list[int], group_query: bool) -> list[str]:
    return contract.onnx_outputs(contract.cache_names(cache_layers), group_query)


def export(model, cfg, context: int, lengths: list[int], out: Path, per_layer: bool,
           multimodal_offset: int | None = None) -> None:
    """The graph with `per_layer`: the family's per-layer embeddings as an input (models/family.py);
    with `multimodal_offset`: `multimodal_embeddings` [1, T, hidden] as an input, the embedding of
    each token whose id is at or past the offset."""
    flat = _FlatSignature(model, cfg.cache_layers, per_layer, multimodal_offset).eval()
    t = 3  # any length > 1, so the exporter keeps the sequence dimension symbolic
    pos = torch.arange(t, dtype=torch.int32)
    args = [torch.ones(1, t, dtype=torch.int32)]
    names = ["tokens"]
    if multimodal_offset is not None:
        args.append(torch.zeros(1, t, cfg.hidden_size))
        names.append(contract.MULTIMODAL_INPUT)
    if per_layer:
        args.append(torch.zeros(1, t, cfg.num_hidden_layers, cfg.hidden_size_per_layer_input))
        names.append("per_layer_embeddings")
    args += [pos, torch.from_numpy(contract.causal_mask(pos.numpy(), context))]
    names += ["input_pos", "mask"]
    shapes = contract.cache_shapes(cfg.cache_layers, cfg.num_key_value_heads, lengths, cfg.head_dim,
                                   flat.group_query)
    args += [torch.zeros(shape) for shape in shapes.values()]
    names += list(shapes)

    seq = torch.export.Dim("seq", min=1, max=context)
    dyn = {"tokens": {1: seq}, "input_pos": {0: seq}, "mask": {2: seq}, contract.MULTIMODAL_INPUT: {1: seq}}
    if per_layer:
        dyn["per_layer_embeddings"] = {1: seq}
    dynamic_shapes = [dyn.get(name) for name in names]
    rest_shapes = (dynamic_shapes[0], tuple(dynamic_shapes[1:]))
    with torch.no_grad():
        program = torch.onnx.export(
            flat, tuple(args), dynamo=True, input_names=names,
            output_names=output_names(cfg.cache_layers, flat.group_query),
            dynamic_shapes=rest_shapes, optimize=True, verbose=False,
            custom_translation_table=TRANSLATIONS,
        )
    _save(program, out)


def export_audio(graph, out: Path) -> None:
    """Gemma 3n's audio graph (models/gemma3n_audio.AudioGraph): `input_features` [1, T, mel bins]
    and `input_features_mask` [1, T] (true where valid) in, any T from one encoder chunk to 30 s;
    `audio_embeddings` [1, T', hidden] and `audio_mask` [1, T'] out."""
    frames = torch.export.Dim("frames", min=32, max=4096)
    sample = (torch.zeros(1, 256, graph.model.audio_tower.config.input_feat_size), torch.ones(1, 256, dtype=torch.bool))
    with torch.no_grad():
        program = torch.onnx.export(
            graph, sample, dynamo=True, input_names=["input_features", "input_features_mask"],
            output_names=["audio_embeddings", "audio_mask"],
            dynamic_shapes={"features": {1: frames}, "mask": {1: frames}}, optimize=True, verbose=False,
            custom_translation_table=TRANSLATIONS)
    _save(program, out)


def _save(program, out: Path) -> None:
    _drop_stack_traces(program.model)
    program.save(str(out), external_data=True)
    _forget_last_match()


def _forget_last_match() -> None:
    """onnxscript's rewrite rules (the exporter's `optimize=True`) are module globals whose
    matchers keep the last graph and node they looked at, and with them the exported weights until
    the next export (onnxscript 0.7: full-size E2B's text weights stayed resident while its audio
    tower was exported after them). Their match state dropped, the graph goes with the program.
    tests/test_audio_prompts.py checks that an export lets go of its weights."""
    from onnxscript.rewriter._matcher import SimplePatternMatcher

    for obj in gc.get_objects():
        if isinstance(obj, SimplePatternMatcher):
            with contextlib.suppress(AttributeError):  # private state: another onnxscript may differ
                obj._init_match(0)
                obj._graph = None


def _drop_stack_traces(model) -> None:
    """The exporter records on every node the Python stack that made it: the building machine's
    file paths and edgepack's line numbers. Without them a bundle is the same bytes wherever it is
    built, and says nothing about the machine that built it."""
    graphs = [model.graph, *model.functions.values()]
    for graph in graphs:
        for node in graph.all_nodes() if hasattr(graph, "all_nodes") else graph:
            node.metadata_props.pop(STACK_TRACE, None)
