"""Everything decided about a bundle before a byte is converted, in one function: `plan_export`.

From the family, the checkpoint's text config, a recipe, the format, the context and the prefill
length it decides the graphs and their signatures, each cache layer's length (rings for sliding
windows), the tables kept out of the graph as row stores, and every tensor's precision. `edgepack
export` carries the plan out; `edgepack profile` predicts memory from the same plan, so what it
predicts for a checkpoint or a preset is what an export of it would write.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from edgepack import contract, plan
from edgepack.converters import quant_plan, recipes
from edgepack.converters.models.family import Family, Table
from edgepack.converters.quant_plan import TensorPlan
from edgepack.errors import EdgepackError

GRAPH_FILES = {"litertlm": "model.litertlm", "onnx": "model.onnx"}
AUDIO = "audio_tower"  # the recipe component of the audio graph's weights (apart from the main graph's)


@dataclasses.dataclass
class ExportPlan:
    family: Family
    config: Any  # the family's config dataclass
    recipe: recipes.Recipe
    format: str
    max_context: int
    prefill_len: int
    decoder: Any  # the family's graph module on the meta device (no weights yet)
    graph: plan.Graph  # sections are known once the .litertlm is packaged
    tensors: dict[str, TensorPlan]  # every matrix of the graph and every table, by checkpoint name
    tables: dict[str, Table]  # row store name -> table kept out of the graph
    audio_settings: Any = None  # Gemma 3n with an audio tower: its gemma3n_audio.AudioSettings

    @property
    def quantized(self) -> bool:
        return self.recipe is not recipes.NONE

    def store_layout(self, name: str) -> plan.RowStore:
        """The row store `name` as the exporter will write it (file and offsets are set then)."""
        table = self.tables[name]
        p = self.tensors[table.tensor]
        rows, cols = p.shape
        scale = table.scale(self.config)
        if p.bits == 32:
            return plan.RowStore("", 0, [rows, cols], "float32", scale)
        return plan.RowStore("", 0, [rows, cols], f"int{p.bits}", scale, block=p.block or cols)

    def graph_bytes(self) -> int:
        """Planned bytes of the main graph's weights: every vector in float32, every matrix as
        planned, the tied LM head once at its own precision, the tables kept out of it excluded."""
        vectors = sum(4 * math.prod(p.shape) for _, p in self.decoder.named_parameters() if p.dim() != 2)
        outside = {t.tensor for t in self.tables.values()}
        head = self.tensors.get(quant_plan.LM_HEAD, self.tensors.get(quant_plan.EMBEDDING))
        matrices = sum(p.nbytes for n, p in self.tensors.items()
                       if n not in outside | {quant_plan.EMBEDDING, quant_plan.LM_HEAD} and p.component != AUDIO)
        return vectors + (head.nbytes if head else 0) + matrices


def plan_export(family: Family, hf_config: dict, recipe: recipes.Recipe, fmt: str, max_context: int,
                prefill_len: int, storage: Callable[[str], str] = lambda name: "BF16",
                audio: dict | None = None) -> ExportPlan:
    """The plan for a bundle of `fmt` from a checkpoint of `family` whose text config is `hf_config`
    and whose tensors are stored as `storage(name)` says ("BF16", "Q4_K", ...). `audio`: a Gemma 3n
    checkpoint's audio (Source.audio), exported beside the text graph."""
    import torch

    if fmt not in plan.FORMATS:
        raise EdgepackError(f"unknown format {fmt!r}; choose from {', '.join(plan.FORMATS)}")
    if not 2 <= max_context <= plan.MAX_EXPORT_CONTEXT:
        raise EdgepackError(f"--max-context must be from 2 to {plan.MAX_EXPORT_CONTEXT:,}, got {max_context}")
    if not 1 <= prefill_len <= max_context:
        raise EdgepackError(f"--prefill-len must be from 1 to the context ({max_context}), got {prefill_len}")
    cfg = family.config_from_hf(hf_config)
    if max_context > cfg.max_position_embeddings:
        raise EdgepackError(f"--max-context {max_context} exceeds the model's {cfg.max_position_embeddings} positions")
    with torch.device("meta"):
        decoder = family.decoder(cfg, family.cache_backend(fmt)).eval()
    tables = family.tables_for(fmt)
    shapes = {n: tuple(p.shape) for n, p in decoder.named_parameters()}
    for t in tables.values():  # a table outside the graph: [vocab, width] from the config
        shapes.setdefault(t.tensor, t.shape(cfg))
    tensors = quant_plan.plan_all(shapes, recipe, fmt, storage, head_apart="embeddings" in tables)
    settings = None
    if audio is not None:
        from edgepack.converters.models import gemma3n_audio

        settings = gemma3n_audio.AudioSettings.from_hf(audio["config"])
        tensors |= quant_plan.plan_all(gemma3n_audio.graph_tensors(audio["shapes"]), recipe, fmt, storage,
                                       head_apart=False)
    # A graph call writes up to `chunk` new K/V before its first query attends (contract.cache_lengths);
    # a group-query graph's window cache keeps some slack instead (contract.window_slack).
    group_query = family.cache_backend(fmt) == "group_query"
    chunk = prefill_len if fmt == "litertlm" else 1
    if group_query:
        chunk = contract.window_slack(cfg.sliding_window) + 1
    graph = plan.Graph(
        file=GRAPH_FILES[fmt], prefill_lengths=[prefill_len] if fmt == "litertlm" else [],
        inputs=family.graph_input(fmt), cache_layers=cfg.cache_layers,
        cache_lengths=contract.cache_lengths(cfg.layer_types, cfg.cache_layers, cfg.sliding_window, max_context, chunk),
        num_kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, vocab_size=cfg.vocab_size,
        group_query=group_query)
    return ExportPlan(family, cfg, recipe, fmt, max_context, prefill_len, decoder, graph, tensors, tables,
                      settings)
