"""Gemma 3n text decoder (E2B, E4B and any MatFormer slice), re-authored for export.

Attribute names mirror the checkpoint (`model.language_model.layers.7.altup.modality_router` ...),
so each checkpoint tensor is read into the parameter of the same name with no mapping table.
Numerical reference: transformers' `models/gemma3n/modeling_gemma3n.py`.

What is deliberately not in this graph: the per-layer embedding table `embed_tokens_per_layer`
(2.0B of E2B's parameters). Looking a row up is a pure function of the token id, so it lives in a
memory-mapped store and the graph receives the gathered rows as `per_layer_embeddings`
[1, T, L, 256], already scaled by sqrt(256); the per-layer projection, its norm and the merge of
the two stay here (`per_layer_inputs`). `FAMILY` at the end says so to the rest of the tree.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from edgepack import contract
from edgepack.converters.models import blocks, family, gemma3n_pieces
from edgepack.converters.models.gemma3 import rope_settings


@dataclasses.dataclass
class Gemma3nConfig:
    vocab_size: int
    vocab_size_per_layer_input: int
    hidden_size: int
    hidden_size_per_layer_input: int
    intermediate_size: list[int]
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    layer_types: list[str]
    sliding_window: int
    num_kv_shared_layers: int
    activation_sparsity_pattern: list[float]
    rope_theta: dict[str, float]
    rope_factor: dict[str, float]
    altup_num_inputs: int = 4
    altup_active_idx: int = 0
    altup_correct_scale: bool = True
    laurel_rank: int = 64
    rms_norm_eps: float = 1e-6
    final_logit_softcapping: float | None = 30.0
    max_position_embeddings: int = 32768
    bos_token_id: int = 2
    eos_token_id: list[int] = dataclasses.field(default_factory=lambda: [1, 106])
    pad_token_id: int = 0

    @property
    def first_shared_layer(self) -> int:
        return self.num_hidden_layers - self.num_kv_shared_layers

    @property
    def cache_layers(self) -> list[int]:
        """Layers that own a KV cache (20 for both E2B and E4B)."""
        return list(range(self.first_shared_layer))

    def kv_source(self, i: int) -> int:
        """The layer whose cache layer i reads: itself, or for a KV-shared layer the last earlier
        cache-owning layer of the same type (transformers' "store" layer)."""
        if i < self.first_shared_layer:
            return i
        kind = self.layer_types[i]
        return max(j for j in self.cache_layers if self.layer_types[j] == kind)

    @classmethod
    def from_hf(cls, cfg: dict) -> "Gemma3nConfig":
        n = cfg["num_hidden_layers"]
        inter = cfg.get("intermediate_size", 16384)
        sparsity = cfg.get("activation_sparsity_pattern")
        if sparsity is None:
            sparse = 10 if n > 10 else 0
            sparsity = [0.95] * sparse + [0.0] * (n - sparse)
        theta, factor = rope_settings(cfg, default_global=1_000_000.0, default_local=10_000.0)
        eos = cfg.get("eos_token_id", [1, 106])
        return cls(
            vocab_size=cfg["vocab_size"],
            vocab_size_per_layer_input=cfg.get("vocab_size_per_layer_input", 262144),
            hidden_size=cfg["hidden_size"],
            hidden_size_per_layer_input=cfg.get("hidden_size_per_layer_input", 256),
            intermediate_size=list(inter) if isinstance(inter, list) else [inter] * n,
            num_hidden_layers=n,
            num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=cfg["num_key_value_heads"],
            head_dim=cfg.get("head_dim", 256),
            layer_types=family.layer_types(cfg, every=5),
            sliding_window=cfg.get("sliding_window", 512),
            num_kv_shared_layers=cfg.get("num_kv_shared_layers", 0),
            activation_sparsity_pattern=list(sparsity),
            rope_theta=theta,
            rope_factor=factor,
            altup_num_inputs=cfg.get("altup_num_inputs", 4),
            altup_active_idx=cfg.get("altup_active_idx", 0),
            altup_correct_scale=cfg.get("altup_correct_scale", True),
            laurel_rank=cfg.get("laurel_rank", 64),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            final_logit_softcapping=cfg.get("final_logit_softcapping", 30.0),
            max_position_embeddings=cfg.get("max_position_embeddings", 32768),
            bos_token_id=cfg.get("bos_token_id", 2),
            eos_token_id=eos if isinstance(eos, list) else [eos],
            pad_token_id=cfg.get("pad_token_id", 0) or 0,
        )


class Gemma3nAltUp(nn.Module):
    def __init__(self, cfg: Gemma3nConfig):
        super().__init__()
        n = cfg.altup_num_inputs
        self.correct_output_scale = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.correction_coefs = nn.Linear(n, n, bias=False)
        self.prediction_coefs = nn.Linear(n, n * n, bias=False)
        self.modality_router = nn.Linear(cfg.hidden_size, n, bias=False)
        self.router_norm = blocks.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.n, self.active, self.hidden = n, cfg.altup_active_idx, cfg.hidden_size

    def modalities(self, x):
        return torch.tanh(self.modality_router(self.router_norm(x) * (1.0 / self.hidden)))

    def predict(self, streams):  # streams [N, 1, T, H]
        m = self.modalities(streams[self.active])
        coefs = self.prediction_coefs(m).reshape(*m.shape[:-1], self.n, self.n).permute(0, 1, 3, 2)
        pred = torch.matmul(streams.permute(1, 2, 3, 0), coefs).permute(3, 0, 1, 2)
        return pred + streams

    def correct(self, predictions, activated):
        coefs = self.correction_coefs(self.modalities(activated)) + 1.0  # [1, T, N]
        innovation = activated - predictions[self.active]
        return innovation[None] * coefs.permute(2, 0, 1)[..., None] + predictions


class Gemma3nLaurelBlock(nn.Module):
    def __init__(self, cfg: Gemma3nConfig):
        super().__init__()
        self.linear_left = nn.Linear(cfg.hidden_size, cfg.laurel_rank, bias=False)
        self.linear_right = nn.Linear(cfg.laurel_rank, cfg.hidden_size, bias=False)
        self.post_laurel_norm = blocks.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x):
        return x + self.post_laurel_norm(self.linear_right(self.linear_left(x)))


class Gemma3nMLP(nn.Module):
    def __init__(self, cfg: Gemma3nConfig, i: int):
        super().__init__()
        width = cfg.intermediate_size[i]
        self.gate_proj = nn.Linear(cfg.hidden_size, width, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, cfg.hidden_size, bias=False)
        sparsity = cfg.activation_sparsity_pattern[i]
        # icdf(sparsity) of the standard normal, computed here: transformers 5 keeps it in a
        # buffer that from_pretrained leaves uninitialised, the defect export_hf inherits.
        self.std_multiplier = statistics.NormalDist().inv_cdf(sparsity) if sparsity > 0 else None

    def forward(self, x):
        gate = self.gate_proj(x)
        if self.std_multiplier is not None:
            mean = gate.mean(-1, keepdim=True)
            std = torch.sqrt(((gate - mean) ** 2).mean(-1, keepdim=True))  # population std
            gate = torch.relu(gate - (mean + std * self.std_multiplier))
        return self.down_proj(blocks.gelu_tanh(gate) * self.up_proj(x))


class Gemma3nAttention(nn.Module):
    def __init__(self, cfg: Gemma3nConfig, i: int):
        super().__init__()
        h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.owns_cache = i < cfg.first_shared_layer
        self.q_proj = nn.Linear(cfg.hidden_size, h * d, bias=False)
        self.q_norm = blocks.RMSNorm(d, cfg.rms_norm_eps)
        if self.owns_cache:  # KV-shared layers have no K/V weights at all
            self.k_proj = nn.Linear(cfg.hidden_size, kvh * d, bias=False)
            self.v_proj = nn.Linear(cfg.hidden_size, kvh * d, bias=False)
            self.k_norm = blocks.RMSNorm(d, cfg.rms_norm_eps)
            self.v_norm = blocks.RMSNorm(d, cfg.rms_norm_eps, with_scale=False)
        self.o_proj = nn.Linear(h * d, cfg.hidden_size, bias=False)
        self.shape = (h, kvh, d)

    def forward(self, x, cos, sin, mask, kv: blocks.LayerKV, input_pos, cache: blocks.KVCache):
        """`kv`: this layer's cache, or for a KV-shared layer what its source layer wrote."""
        h, kvh, d = self.shape
        t = x.shape[1]
        q = blocks.apply_rope(self.q_norm(self.q_proj(x).reshape(1, t, h, d)), cos, sin)
        if self.owns_cache:
            k = blocks.apply_rope(self.k_norm(self.k_proj(x).reshape(1, t, kvh, d)), cos, sin)
            v = self.v_norm(self.v_proj(x).reshape(1, t, kvh, d))
            kv = cache.write(kv.k, kv.v, k.transpose(1, 2), v.permute(0, 2, 3, 1), input_pos, mask.ring)
        return self.o_proj(blocks.attend(q, kv, mask, scaling=1.0)), kv


class Gemma3nDecoderLayer(nn.Module):
    def __init__(self, cfg: Gemma3nConfig, i: int):
        super().__init__()
        eps, hs = cfg.rms_norm_eps, cfg.hidden_size
        self.self_attn = Gemma3nAttention(cfg, i)
        self.mlp = Gemma3nMLP(cfg, i)
        self.input_layernorm = blocks.RMSNorm(hs, eps)
        self.post_attention_layernorm = blocks.RMSNorm(hs, eps)
        self.pre_feedforward_layernorm = blocks.RMSNorm(hs, eps)
        self.post_feedforward_layernorm = blocks.RMSNorm(hs, eps)
        self.altup = Gemma3nAltUp(cfg)
        self.laurel = Gemma3nLaurelBlock(cfg)
        self.per_layer_input_gate = nn.Linear(hs, cfg.hidden_size_per_layer_input, bias=False)
        self.per_layer_projection = nn.Linear(cfg.hidden_size_per_layer_input, hs, bias=False)
        self.post_per_layer_input_norm = blocks.RMSNorm(hs, eps)
        self.correct_scale = cfg.altup_correct_scale

    def forward(self, streams, cos, sin, mask, per_layer_input, kv, input_pos, cache):
        predictions = self.altup.predict(streams)
        active = predictions[self.altup.active]
        normed = self.input_layernorm(active)
        laurel = self.laurel(normed)
        attn, kv = self.self_attn(normed, cos, sin, mask, kv, input_pos, cache)
        a = (active + self.post_attention_layernorm(attn) + laurel) * (1.0 / math.sqrt(2.0))
        y = a + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(a)))
        corrected = self.altup.correct(predictions, y)
        g = corrected[self.altup.active]
        if self.correct_scale:
            g = g * self.altup.correct_output_scale
        g = blocks.gelu_tanh(self.per_layer_input_gate(g)) * per_layer_input
        g = self.post_per_layer_input_norm(self.per_layer_projection(g))
        return torch.cat([corrected[:1], corrected[1:] + g[None]], dim=0), kv


class Gemma3nTextModel(nn.Module):
    def __init__(self, cfg: Gemma3nConfig):
        super().__init__()
        hs, n = cfg.hidden_size, cfg.altup_num_inputs
        self.embed_tokens = blocks.TiedEmbedding(cfg.vocab_size, hs)
        self.layers = nn.ModuleList(Gemma3nDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = blocks.RMSNorm(hs, cfg.rms_norm_eps)
        self.per_layer_model_projection = nn.Linear(
            hs, cfg.num_hidden_layers * cfg.hidden_size_per_layer_input, bias=False
        )
        self.per_layer_projection_norm = blocks.RMSNorm(cfg.hidden_size_per_layer_input, cfg.rms_norm_eps)
        self.altup_projections = nn.ModuleList(nn.Linear(hs, hs, bias=False) for _ in range(1, n))
        self.altup_unembed_projections = nn.ModuleList(nn.Linear(hs, hs, bias=False) for _ in range(1, n))


def _match_magnitude(x, target):
    mag = torch.sqrt(torch.clamp((x**2).mean(-1, keepdim=True), min=1e-5))
    return x * target / mag


class Gemma3nForCausalLM(nn.Module):
    """`forward(per_layer_embeddings, input_pos, mask, kv_cache, embeddings= | tokens=)`.

    `embeddings` are `embed_tokens(ids) * sqrt(hidden)`, looked up outside the graph for LiteRT-LM
    (its `embedder` model); given `tokens` (ONNX) the lookup happens inside, so the one embedding
    table serves both the lookup and the tied LM head.
    """

    def __init__(self, cfg: Gemma3nConfig, cache_backend: str = "tflite"):
        super().__init__()
        self.config = cfg
        self.model = Gemma3nTextModel(cfg)
        self.cache = blocks.KVCache(cache_backend)
        self.emit_logits = True
        for kind in ("full_attention", "sliding_attention"):
            inv = blocks.rope_inv_freq(cfg.head_dim, cfg.rope_theta[kind], cfg.rope_factor[kind])
            self.register_buffer(f"{kind}_inv_freq", inv, persistent=False)

    def embed(self, tokens):
        return self.model.embed_tokens(tokens) * math.sqrt(self.config.hidden_size)

    def per_layer_inputs(self, x, per_layer_embeddings):
        cfg = self.config
        proj = self.model.per_layer_model_projection(x) * (cfg.hidden_size**-0.5)
        proj = self.model.per_layer_projection_norm(
            proj.reshape(*x.shape[:-1], cfg.num_hidden_layers, cfg.hidden_size_per_layer_input)
        )
        return (proj + per_layer_embeddings) * (2.0**-0.5)

    def forward(self, per_layer_embeddings, input_pos, mask, kv_cache: dict[str, torch.Tensor],
                embeddings=None, tokens=None):
        cfg, m = self.config, self.model
        x = self.embed(tokens) if tokens is not None else embeddings
        streams, ple, rope, masks = self.begin(x, per_layer_embeddings, input_pos, mask,
                                               blocks.cache_lengths(cfg, kv_cache))
        caches = {i: blocks.LayerKV(kv_cache[f"k_{i}"], kv_cache[f"v_{i}"]) for i in cfg.cache_layers}
        for i, layer in enumerate(m.layers):
            kind = cfg.layer_types[i]
            src = cfg.kv_source(i)
            streams, kv = layer(streams, *rope[kind], masks[kind], ple[:, :, i], caches[src], input_pos, self.cache)
            if src == i:
                caches[i] = kv

        out = {}
        for i, kv in caches.items():
            out |= self.cache.outputs(i, kv)
        if self.emit_logits:
            out["logits"] = self.finish(streams)
        return out

    def begin(self, x, per_layer_embeddings, input_pos, mask, lengths: dict[str, int]):
        """What every layer reads: the AltUp streams [N, 1, T, H], the per-layer inputs
        [1, T, L, 256], RoPE cos/sin and the mask of each layer kind."""
        cfg, m = self.config, self.model
        ple = self.per_layer_inputs(x, per_layer_embeddings)
        target = torch.sqrt((x**2).mean(-1, keepdim=True))
        streams = torch.stack([x] + [_match_magnitude(p(x), target) for p in m.altup_projections])
        rope = {k: blocks.rope_cos_sin(input_pos, getattr(self, f"{k}_inv_freq")) for k in cfg.rope_theta}
        masks = self.cache.masks(mask, input_pos, cfg.sliding_window, lengths)
        return streams, ple, rope, masks

    def finish(self, streams):
        """Logits of the last position: AltUp streams merged, final norm, tied LM head, softcap."""
        m = self.model
        last = streams[:, :, -1:]
        target = torch.sqrt((last[0] ** 2).mean(-1, keepdim=True))
        unembedded = [last[0]] + [
            _match_magnitude(p(last[j + 1]), target) for j, p in enumerate(m.altup_unembed_projections)
        ]
        h = m.norm(torch.stack(unembedded).mean(0))
        return blocks.softcap(m.embed_tokens.logits(h), self.config.final_logit_softcapping)


class PerLayerEmbedder(nn.Module):
    """LiteRT-LM's `per_layer_embedder` model: token_ids -> table rows * sqrt(256), [1, T, L, 256].

    The table is a constant of this small graph; edgepack's runtime reads it straight from the
    bundle file instead of running the graph (the manifest records where it sits)."""

    def __init__(self, table: torch.Tensor, cfg: Gemma3nConfig):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)
        self.cfg = cfg

    def forward(self, token_ids):
        cfg = self.cfg
        in_table = (token_ids >= 0) & (token_ids < cfg.vocab_size_per_layer_input)
        ids = torch.where(in_table, token_ids, torch.zeros_like(token_ids))
        rows = F.embedding(ids, self.table) * math.sqrt(cfg.hidden_size_per_layer_input)  # EMBEDDING_LOOKUP
        return {"embeddings": rows.reshape(*ids.shape, cfg.num_hidden_layers, cfg.hidden_size_per_layer_input)}


class Embedder(nn.Module):
    """LiteRT-LM's `embedder` model: token_ids -> embed_tokens(ids) * sqrt(hidden)."""

    def __init__(self, table: torch.Tensor, scale: float):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)
        self.scale = scale

    def forward(self, token_ids):
        ids = torch.clamp(token_ids, min=0)
        return {"embeddings": F.embedding(ids, self.table) * self.scale}  # EMBEDDING_LOOKUP


PLE_TABLE = "model.embed_tokens_per_layer.weight"

FAMILY = family.Family(
    name="gemma3n",
    architectures={"Gemma3nForConditionalGeneration": ("model.language_model.", "text_config"),
                   "Gemma3nForCausalLM": ("model.", None)},
    config_from_hf=Gemma3nConfig.from_hf,
    decoder=Gemma3nForCausalLM,
    litertlm_model_type="gemma3n",
    tables={
        # LiteRT-LM's Gemma 3n runs an embedder graph of its own; the main graph takes embeddings
        "embeddings": family.Table(
            "model.embed_tokens.weight", shape=lambda cfg: (cfg.vocab_size, cfg.hidden_size),
            scale=lambda cfg: math.sqrt(cfg.hidden_size), formats=("litertlm",),
            section="tf_lite_embedder", signature=contract.EMBEDDER_SIGNATURE,
            module=lambda table, cfg: Embedder(table, math.sqrt(cfg.hidden_size))),
        # the per-layer embedding table (2.0B of E2B's parameters) never enters a graph
        "per_layer_embeddings": family.Table(
            PLE_TABLE, shape=lambda cfg: (cfg.vocab_size_per_layer_input,
                                          cfg.num_hidden_layers * cfg.hidden_size_per_layer_input),
            scale=lambda cfg: math.sqrt(cfg.hidden_size_per_layer_input), formats=("litertlm", "onnx"),
            section="tf_lite_per_layer_embedder", signature=contract.PER_LAYER_EMBEDDER_SIGNATURE,
            module=PerLayerEmbedder),
    },
    litertlm_pieces=gemma3n_pieces.pieces,  # where the .litertlm main model is cut, and the wires
    # KV-shared layers read an earlier layer's cache: the real checkpoints still carry their K/V
    unused_tensors=lambda cfg: [f"model.layers.{i}.self_attn.{p}.weight" for i in
                                range(cfg.first_shared_layer, cfg.num_hidden_layers) for p in ("k_proj", "v_proj", "k_norm")],
)
