"""What makes a model family a family, in one place: each model file (gemma3.py, gemma3n.py)
declares a `FAMILY` of this type, and converters/families.py registers them. The rest of the tree
asks the descriptor, never which family it has.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

LAYER_KINDS = ("full_attention", "sliding_attention")


def layer_types(config: dict, every: int) -> list[str]:
    """Each layer's attention kind from a Hugging Face config; configs older than transformers'
    `layer_types` key follow the family's pattern: every `every`-th layer global."""
    n = int(config["num_hidden_layers"])
    return list(config.get("layer_types") or
                ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n)])


@dataclasses.dataclass(frozen=True)
class Table:
    """A checkpoint tensor kept out of the decoder graph as a memory-mapped row store: looking a
    row up is a pure function of the token id, so the runtime gathers rows instead of running a
    graph over the whole table."""
    tensor: str  # its checkpoint name, e.g. "model.embed_tokens_per_layer.weight"
    shape: Callable[[Any], tuple[int, int]]  # config -> [rows, width]
    scale: Callable[[Any], float]  # config -> the constant every row is multiplied by
    formats: tuple[str, ...]  # the bundle formats that keep it out of the main graph
    # In a .litertlm, LiteRT-LM runs a small graph over the table: its section model type, its
    # signature, and the module built around the table (table tensor, config -> nn.Module).
    section: str
    signature: str
    module: Callable[[Any, Any], Any]


@dataclasses.dataclass
class PieceSpec:
    """One piece of a main model converted a piece at a time (converters/litertlm_pieces.py)."""
    name: str
    module: Any  # the nn.Module converted for it, over the whole decoder (`module.model`)
    params: list[str]  # the checkpoint tensors it reads (the graph mirrors their names)
    signatures: list[str]
    inputs: dict[str, str]  # piece input -> wire: a model input's name, or "<piece>.<output>"
    outputs: dict[str, str]  # model output -> piece output
    # (config, tokens per call, cache lengths, context, the whole graph's sample inputs) -> a zero
    # tensor per input that is an inner wire, by input name
    inner_wires: Callable[[Any, int, list[int], int, dict], dict]


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    # Hugging Face architecture -> (prefix of the text decoder's tensors, key of the text config in
    # config.json or None when the config is the text config itself)
    architectures: dict[str, tuple[str, str | None]]
    config_from_hf: Callable[[dict], Any]  # the family's config dataclass from a text config dict
    decoder: Callable[[Any, str], Any]  # (config, a blocks.KVCache backend) -> the graph module
    litertlm_model_type: str  # LiteRT-LM's LlmModelType field for the family
    tables: dict[str, Table] = dataclasses.field(default_factory=dict)  # row store name -> table
    # (decoder, config, prefill length, cache lengths) -> the pieces a .litertlm main model is
    # converted as, one at a time (converters/litertlm_pieces.py); None: converted whole
    litertlm_pieces: Callable[[Any, Any, int, list[int]], list[PieceSpec]] | None = None
    # checkpoint tensors the decoder never reads (config -> names), left out of every plan
    unused_tensors: Callable[[Any], list[str]] = lambda cfg: []
    # Its ONNX graph attends with onnxruntime's GroupQueryAttention (plan.Graph.group_query). Gemma
    # 3n's doesn't: its KV-shared layers read another layer's cache with the chunk written, which
    # the kernel only gives as an output (onnxruntime issue 28318).
    onnx_group_query: bool = False

    def cache_backend(self, fmt: str) -> str:
        """The blocks.KVCache backend of the family's graph in a bundle of format `fmt`."""
        if fmt == "litertlm":
            return "tflite"
        return "group_query" if self.onnx_group_query else "onnx"

    @property
    def piecewise_litertlm(self) -> bool:
        return self.litertlm_pieces is not None

    def tables_for(self, fmt: str) -> dict[str, Table]:
        """The tables a bundle of format `fmt` keeps out of its main graph."""
        return {name: t for name, t in self.tables.items() if fmt in t.formats}

    def graph_input(self, fmt: str) -> str:
        """What the main graph takes: token ids, or embeddings gathered from a row store."""
        return "embeddings" if "embeddings" in self.tables_for(fmt) else "tokens"

    def per_layer_input(self, fmt: str) -> bool:
        """Whether the main graph also takes per-layer embeddings gathered from a row store."""
        return "per_layer_embeddings" in self.tables_for(fmt)
