"""Gemma 3 text decoder (Gemma3ForCausalLM, incl. the 270M), re-authored for export.

Module and attribute names mirror the checkpoint's tensor names (`model.layers.3.self_attn.q_proj`
...), so each checkpoint tensor is read into the parameter of the same name (converters/decoder.py)
with no mapping table. The numerical reference is transformers' `models/gemma3/modeling_gemma3.py`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from edgepack.converters import onnx_quant
from edgepack.converters.models import blocks, family
from edgepack.errors import EdgepackError


@dataclasses.dataclass
class Gemma3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    layer_types: list[str]
    sliding_window: int
    query_pre_attn_scalar: float
    rope_theta: dict[str, float]  # per layer type
    rope_factor: dict[str, float]  # transformers' "linear" scaling, 1.0 when absent
    rms_norm_eps: float = 1e-6
    final_logit_softcapping: float | None = None
    max_position_embeddings: int = 32768
    bos_token_id: int = 2
    eos_token_id: list[int] = dataclasses.field(default_factory=lambda: [1])
    pad_token_id: int = 0

    @property
    def cache_layers(self) -> list[int]:
        """Layers that own a KV cache: all of them in Gemma 3."""
        return list(range(self.num_hidden_layers))

    @classmethod
    def from_hf(cls, cfg: dict) -> "Gemma3Config":
        n = cfg["num_hidden_layers"]
        theta, factor = rope_settings(cfg, default_global=1_000_000.0, default_local=10_000.0)
        eos = cfg.get("eos_token_id", 1)
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=n,
            num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=cfg["num_key_value_heads"],
            head_dim=cfg.get("head_dim", 256),
            layer_types=family.layer_types(cfg, every=int(cfg.get("sliding_window_pattern", 6))),
            sliding_window=cfg.get("sliding_window", 512),
            query_pre_attn_scalar=cfg.get("query_pre_attn_scalar", 256),
            rope_theta=theta,
            rope_factor=factor,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            final_logit_softcapping=cfg.get("final_logit_softcapping"),
            max_position_embeddings=cfg.get("max_position_embeddings", 32768),
            bos_token_id=cfg.get("bos_token_id", 2),
            eos_token_id=eos if isinstance(eos, list) else [eos],
            pad_token_id=cfg.get("pad_token_id", 0) or 0,
        )


def rope_settings(cfg: dict, default_global: float, default_local: float) -> tuple[dict, dict]:
    """RoPE theta and linear factor per layer type, from a transformers 5 config (nested
    `rope_parameters`) or a transformers 4 one (`rope_theta`, `rope_local_base_freq`, `rope_scaling`)."""
    params = cfg.get("rope_parameters")
    theta, factor = {}, {}
    for kind, default in (("full_attention", default_global), ("sliding_attention", default_local)):
        p = params.get(kind) if isinstance(params, dict) else None
        if p is None:
            legacy = cfg.get("rope_theta" if kind == "full_attention" else "rope_local_base_freq")
            scaling = cfg.get("rope_scaling") if kind == "full_attention" else None
            p = {"rope_theta": legacy or default, **(scaling or {})}
        rope_type = p.get("rope_type", p.get("type", "default"))
        if rope_type not in ("default", "linear"):
            raise EdgepackError(f"the checkpoint's RoPE type {rope_type!r} is not supported (default and linear are)")
        theta[kind] = float(p.get("rope_theta", default))
        factor[kind] = float(p.get("factor", 1.0)) if rope_type == "linear" else 1.0
    return theta, factor


class Gemma3Attention(nn.Module):
    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, h * d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, kvh * d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, kvh * d, bias=False)
        self.o_proj = nn.Linear(h * d, cfg.hidden_size, bias=False)
        self.q_norm = blocks.OffsetRMSNorm(d, cfg.rms_norm_eps)
        self.k_norm = blocks.OffsetRMSNorm(d, cfg.rms_norm_eps)
        self.shape = (h, kvh, d)
        self.scaling = cfg.query_pre_attn_scalar**-0.5

    def forward(self, x, cos, sin, mask, kv: blocks.LayerKV, input_pos, cache: blocks.KVCache):
        h, kvh, d = self.shape
        t = x.shape[1]
        q, k, v = onnx_quant.linears(x, [self.q_proj, self.k_proj, self.v_proj])
        q, k = self.q_norm(q.reshape(1, t, h, d)), self.k_norm(k.reshape(1, t, kvh, d))
        if cache.backend == "group_query":  # cos/sin of every position: the kernel rotates q and k
            out, kv = cache.group_query_attend(q, k, v, kv, input_pos, mask, self.scaling, cos, sin)
            return self.o_proj(out), kv
        q, k, v = blocks.apply_rope(q, cos, sin), blocks.apply_rope(k, cos, sin), v.reshape(1, t, kvh, d)
        kv = cache.write(kv.k, kv.v, k.transpose(1, 2), v.permute(0, 2, 3, 1), input_pos, mask.ring)
        return self.o_proj(blocks.attend(q, kv, mask, self.scaling)), kv


class Gemma3MLP(nn.Module):
    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        gate, up = onnx_quant.linears(x, [self.gate_proj, self.up_proj])
        return self.down_proj(blocks.gelu_tanh(gate) * up)


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        eps = cfg.rms_norm_eps
        self.self_attn = Gemma3Attention(cfg)
        self.mlp = Gemma3MLP(cfg)
        self.input_layernorm = blocks.OffsetRMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = blocks.OffsetRMSNorm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = blocks.OffsetRMSNorm(cfg.hidden_size, eps)
        self.post_feedforward_layernorm = blocks.OffsetRMSNorm(cfg.hidden_size, eps)

    def forward(self, x, cos, sin, mask, kv, input_pos, cache):
        attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv, input_pos, cache)
        x = x + self.post_attention_layernorm(attn)
        x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return x, kv


class Gemma3TextModel(nn.Module):
    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        self.embed_tokens = blocks.TiedEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Gemma3DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = blocks.OffsetRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Gemma3ForCausalLM(nn.Module):
    """`forward(tokens, input_pos, mask, kv_cache)` -> updated caches (+ logits when decoding)."""

    def __init__(self, cfg: Gemma3Config, cache_backend: str = "tflite"):
        super().__init__()
        self.config = cfg
        self.model = Gemma3TextModel(cfg)
        self.cache = blocks.KVCache(cache_backend)
        for kind in ("full_attention", "sliding_attention"):
            inv = blocks.rope_inv_freq(cfg.head_dim, cfg.rope_theta[kind], cfg.rope_factor[kind])
            self.register_buffer(f"{kind}_inv_freq", inv, persistent=False)
        self.emit_logits = True

    def forward(self, tokens, input_pos, mask, kv_cache: dict[str, torch.Tensor]):
        cfg = self.config
        # transformers casts the scale to the weight dtype; exports run in fp32.
        x = self.model.embed_tokens(tokens) * math.sqrt(cfg.hidden_size)
        # the chunk's positions; a group-query graph's kernel takes the table of every position
        # instead (a constant, folded once when onnxruntime loads the graph)
        positions = torch.arange(mask.shape[-1], dtype=torch.int32) if self.cache.backend == "group_query" else input_pos
        rope = {k: blocks.rope_cos_sin(positions, getattr(self, f"{k}_inv_freq")) for k in cfg.rope_theta}
        masks = self.cache.masks(mask, input_pos, cfg.sliding_window, blocks.cache_lengths(cfg, kv_cache))
        out = {}
        for i, layer in enumerate(self.model.layers):
            kind = cfg.layer_types[i]
            kv = blocks.LayerKV(kv_cache[f"k_{i}"], kv_cache[f"v_{i}"])
            x, kv = layer(x, *rope[kind], masks[kind], kv, input_pos, self.cache)
            out |= self.cache.outputs(i, kv)
        if self.emit_logits:
            # Only the last position is sampled from; the LM head reads the whole vocabulary.
            h = self.model.norm(x[:, -1:])
            out["logits"] = blocks.softcap(self.model.embed_tokens.logits(h), cfg.final_logit_softcapping)
        return out


FAMILY = family.Family(
    name="gemma3",
    architectures={"Gemma3ForCausalLM": ("model.", None),
                   "Gemma3ForConditionalGeneration": ("model.language_model.", "text_config")},
    config_from_hf=Gemma3Config.from_hf,
    decoder=Gemma3ForCausalLM,
    litertlm_model_type="gemma3",
    onnx_group_query=True,
)
