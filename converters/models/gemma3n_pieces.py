"""Where Gemma 3n's `.litertlm` main model is cut for a conversion a piece at a time, and how the
pieces are wired: the family's half of converters/litertlm_pieces.py (which converts, quantizes
and stitches whatever pieces a family declares).

The cuts follow the decoder's own forward (gemma3n.py): the entry (AltUp streams, per-layer
inputs, RoPE tables, the sliding mask), one piece per decoder layer, the exit (LM head and
softcap). A wire is named by the model input it is ("mask", "input_pos", a cache) or by the piece
output it comes from ("entry.streams", "layer3.k_cache"); stitching joins them into the graph a
whole-model conversion would give (tests/test_stitch.py).
"""

from __future__ import annotations

import torch
from torch import nn

from edgepack import contract
from edgepack.converters.models import blocks
from edgepack.converters.models.family import LAYER_KINDS, PieceSpec

# The checkpoint tensors read outside the decoder layers, by the piece that reads them.
ENTRY_TENSORS = ("model.per_layer_model_projection.", "model.per_layer_projection_norm.", "model.altup_projections.")
EXIT_TENSORS = ("model.norm.", "model.altup_unembed_projections.", "model.embed_tokens.")


class Entry(nn.Module):
    """embeddings, per_layer_embeddings, input_pos, mask -> streams, per-layer inputs, RoPE, sliding mask."""

    def __init__(self, model, lengths: dict[str, int]):
        super().__init__()
        self.model, self.lengths = model, lengths

    def forward(self, embeddings, per_layer_embeddings, input_pos, mask):
        streams, ple, rope, masks = self.model.begin(embeddings, per_layer_embeddings, input_pos, mask, self.lengths)
        out = {"streams": streams, "per_layer_inputs": ple, "sliding_mask": masks["sliding_attention"].cache}
        for kind in LAYER_KINDS:
            out[f"cos_{kind}"], out[f"sin_{kind}"] = rope[kind]
        return out


class Layer(nn.Module):
    """Decoder layer i: streams in and out; a cache owner also writes and outputs its K/V cache."""

    def __init__(self, model, i: int, ring: int | None):
        super().__init__()
        self.model, self.i, self.ring = model, i, ring

    def forward(self, streams, per_layer_inputs, cos, sin, mask, input_pos, k_cache, v_cache):
        m, i = self.model, self.i
        kind = m.config.layer_types[i]
        layer_mask = blocks.LayerMask(mask, ring=self.ring if kind == "sliding_attention" else None)
        streams, kv = m.model.layers[i](streams, cos, sin, layer_mask, per_layer_inputs[:, :, i],
                                        blocks.LayerKV(k_cache, v_cache), input_pos, m.cache)
        out = {"streams": streams}
        if m.config.kv_source(i) == i:
            out |= {"k_cache": kv.k, "v_cache": kv.v}
        return out


class Exit(nn.Module):
    """streams -> logits of the last position (decode only: LiteRT-LM samples from `decode`)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, streams):
        return {"logits": self.model.finish(streams)}


def slots_by_kind(cfg, lengths: list[int]) -> dict[str, int]:
    """Cache slots of each attention kind ('sliding_attention' may be a ring shorter than the
    context), from the cache layers' lengths."""
    return {cfg.layer_types[i]: n for i, n in zip(cfg.cache_layers, lengths)}


def inner_wires(cfg, length: int, lengths: list[int], context: int, model_inputs: dict) -> dict:
    """A zero tensor of each inner wire's shape for a `length`-token call, by the piece input
    that reads it (`model_inputs`: the whole graph's sample inputs)."""
    return {
        "streams": torch.zeros(cfg.altup_num_inputs, 1, length, cfg.hidden_size),
        "per_layer_inputs": model_inputs["per_layer_embeddings"],
        "cos": torch.zeros(length, cfg.head_dim), "sin": torch.zeros(length, cfg.head_dim),
        "mask": torch.zeros(1, 1, length, slots_by_kind(cfg, lengths).get("sliding_attention", context)),
    }


def pieces(model, cfg, prefill_len: int, lengths: list[int]) -> list[PieceSpec]:
    """Entry, the decoder layers in order, exit; wired as the whole graph's forward is."""
    names = [n for n, _ in model.named_parameters()]
    both = [contract.prefill_signature(prefill_len), contract.DECODE]
    by_kind = slots_by_kind(cfg, lengths)
    context = max(lengths)
    ring = by_kind.get("sliding_attention", context)
    ring = ring if ring < context else None
    specs = [PieceSpec("entry", Entry(model, by_kind), [n for n in names if n.startswith(ENTRY_TENSORS)], both,
                       {n: n for n in ("embeddings", "per_layer_embeddings", "input_pos", "mask")}, {}, inner_wires)]
    for i in range(cfg.num_hidden_layers):
        kind, src = cfg.layer_types[i], cfg.kv_source(i)
        k, v = contract.k_cache_name(src), contract.v_cache_name(src)
        inputs = {
            "streams": f"layer{i - 1}.streams" if i else "entry.streams",
            "per_layer_inputs": "entry.per_layer_inputs",
            "cos": f"entry.cos_{kind}", "sin": f"entry.sin_{kind}",
            "mask": "entry.sliding_mask" if kind == "sliding_attention" else "mask",
            "input_pos": "input_pos",
            "k_cache": k if src == i else f"layer{src}.k_cache",
            "v_cache": v if src == i else f"layer{src}.v_cache",
        }
        outputs = {k: "k_cache", v: "v_cache"} if src == i else {}
        specs.append(PieceSpec(f"layer{i}", Layer(model, i, ring),
                               [n for n in names if n.startswith(f"model.layers.{i}.")], both, inputs, outputs,
                               inner_wires))
    specs.append(PieceSpec("exit", Exit(model), [n for n in names if n.startswith(EXIT_TENSORS)], [contract.DECODE],
                           {"streams": f"layer{cfg.num_hidden_layers - 1}.streams"}, {"logits": "logits"},
                           inner_wires))
    return specs
