"""Tiny random checkpoints in the real Hugging Face layouts, made with transformers (never committed).

- Gemma 3n multimodal (`Gemma3nForConditionalGeneration.save_pretrained` layout: text decoder under
  `model.language_model.*`, an audio tower and the vision/audio embedders beside it). The vision
  tower itself needs timm/torchvision, which don't load here (toolchain.md), so it is absent.
- Gemma 3n `Gemma3nForCausalLM`, another shape.
- Gemma 3 `Gemma3ForCausalLM`.

All use the real Gemma tokenizer (262,144 pieces, from the 270M GGUF); Gemma 3n's vocabulary is
262,400, so its tokenizer gets the 256 extra special tokens the real one has.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from edgepack.converters.builtin import extend_vocab

TINY_CONTEXT = 64  # cache length of the tiny bundles
TINY_PREFILL = 8  # short prefill graph, so prompts longer than it go in chunks
MODELS = ("gemma3n_multimodal", "gemma3n_causal", "gemma3")
E4B_LIKE = "gemma3n_e4b_like"  # MatFormer slicing (test_matformer.py)

SLIDING = "sliding_attention"
FULL = "full_attention"


def randomize(model: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Random weights with every path live: transformers' init leaves some scales at zero
    (AltUp's correct_output_scale), and the padding row of embeddings at zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def gemma3n_text_config(**overrides):
    from transformers import Gemma3nTextConfig

    base = dict(
        vocab_size=262_400, vocab_size_per_layer_input=262_144, hidden_size=64,
        hidden_size_per_layer_input=8, intermediate_size=[128] * 7, num_hidden_layers=7,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
        num_kv_shared_layers=3, laurel_rank=8, altup_num_inputs=4, max_position_embeddings=4096,
        activation_sparsity_pattern=[0.95, 0.95, 0.95, 0.0, 0.0, 0.0, 0.0],
        layer_types=[SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL, SLIDING],
        eos_token_id=[1, 106],
    )
    base.update(overrides)
    return Gemma3nTextConfig(**base)


def _save(folder: Path, tensors: dict, config: dict, tokenizer_json: str, chat_template: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in tensors.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer.json").write_text(tokenizer_json)
    if chat_template:
        (folder / "chat_template.jinja").write_text(chat_template)
    return folder


GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


# Gemma 3n's own chat template (Gemma 3's with audio and image items): a user turn's content may be
# a list of parts, an audio part rendered as <audio_soft_token>, which LiteRT-LM's Gemma 3
# conversation code replaces with the clip (and transformers' processor expands).
GEMMA3N_CHAT_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'audio' -%}
                {{ '<audio_soft_token>' }}
            {%- elif item['type'] == 'image' -%}
                {{ '<image_soft_token>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


def with_gemma3n_template(folder: Path, base: Path) -> Path:
    """The multimodal checkpoint `base` (its files linked, not copied) with Gemma 3n's own chat
    template."""
    folder.mkdir(parents=True)
    for f in base.iterdir():
        if f.name != "chat_template.jinja":
            (folder / f.name).symlink_to(f.resolve())
    (folder / "chat_template.jinja").write_text(GEMMA3N_CHAT_TEMPLATE)
    return folder


def make_gemma3n_multimodal(folder: Path, tokenizer_json: str, seed: int = 1, text=None) -> Path:
    from transformers import Gemma3nAudioConfig, Gemma3nAudioFeatureExtractor, Gemma3nConfig, Gemma3nForCausalLM
    from transformers import Gemma3nVisionConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nMultimodalEmbedder

    text = text or gemma3n_text_config()
    lm = Gemma3nForCausalLM(text)
    randomize(lm, seed)
    tensors = {f"model.language_model.{k[len('model.'):]}": v for k, v in lm.state_dict().items()
               if k.startswith("model.")}
    audio_cfg = Gemma3nAudioConfig(hidden_size=32, conf_num_attention_heads=2, conf_num_hidden_layers=2,
                                   sscp_conv_channel_size=[8, 8], conf_conv_kernel_size=3)
    vision_cfg = Gemma3nVisionConfig(hidden_size=32)
    tensors |= {f"model.audio_tower.{k}": v for k, v in Gemma3nAudioEncoder(audio_cfg).state_dict().items()}
    tensors |= {f"model.embed_audio.{k}": v for k, v in Gemma3nMultimodalEmbedder(audio_cfg, text).state_dict().items()}
    tensors |= {f"model.embed_vision.{k}": v
                for k, v in Gemma3nMultimodalEmbedder(vision_cfg, text).state_dict().items()}
    cfg = Gemma3nConfig(text_config=text.to_dict(), audio_config=audio_cfg.to_dict(),
                        vision_config=vision_cfg.to_dict()).to_dict()
    cfg["architectures"] = ["Gemma3nForConditionalGeneration"]
    _save(folder, tensors, cfg, extend_vocab(tokenizer_json, 262_400), GEMMA_CHAT_TEMPLATE)
    Gemma3nAudioFeatureExtractor().to_json_file(folder / "preprocessor_config.json")
    return folder


def make_gemma3n_e4b_like(folder: Path, tokenizer_json: str, seed: int = 4) -> Path:
    """E4B in small: 6 layers alternating sliding and global, the last 2 sharing the K/V of layers
    2 and 3 (E4B: 35 layers in blocks of 4 sliding + 1 global, the last 15 sharing 18's and 19's),
    every FFN 64 wide with 32 nested in it (E4B: 16,384 and 8,192), activation sparsity on the
    first 2 (E4B: 10), the multimodal layout with its audio tower."""
    n = 6
    text = gemma3n_text_config(
        hidden_size=32, hidden_size_per_layer_input=8, intermediate_size=[64] * n, num_hidden_layers=n,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=6, num_kv_shared_layers=2,
        activation_sparsity_pattern=[0.95] * 2 + [0.0] * (n - 2), laurel_rank=4,
        layer_types=[SLIDING, FULL] * (n // 2))
    return make_gemma3n_multimodal(folder, tokenizer_json, seed, text)


def make_gemma3n_causal(folder: Path, tokenizer_json: str, seed: int = 2) -> Path:
    from transformers import Gemma3nForCausalLM

    text = gemma3n_text_config(
        hidden_size=96, hidden_size_per_layer_input=16, intermediate_size=[192, 192, 160, 160, 128, 128],
        num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=6,
        num_kv_shared_layers=2, activation_sparsity_pattern=[0.95, 0.0, 0.0, 0.0, 0.0, 0.0],
        layer_types=[SLIDING, FULL, SLIDING, FULL, SLIDING, FULL],
    )
    lm = Gemma3nForCausalLM(text)
    randomize(lm, seed)
    cfg = text.to_dict()
    cfg["architectures"] = ["Gemma3nForCausalLM"]
    tensors = {k: v for k, v in lm.state_dict().items() if not k.startswith("lm_head")}
    return _save(folder, tensors, cfg, extend_vocab(tokenizer_json, 262_400), GEMMA_CHAT_TEMPLATE)


def make_gemma3(folder: Path, tokenizer_json: str, seed: int = 3) -> Path:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    text = Gemma3TextConfig(
        vocab_size=262_144, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=8,
        query_pre_attn_scalar=16, max_position_embeddings=4096, eos_token_id=[1, 106],
    )
    lm = Gemma3ForCausalLM(text)
    randomize(lm, seed)
    cfg = text.to_dict()
    cfg["architectures"] = ["Gemma3ForCausalLM"]
    tensors = {k: v for k, v in lm.state_dict().items() if not k.startswith("lm_head")}
    return _save(folder, tensors, cfg, tokenizer_json, GEMMA_CHAT_TEMPLATE)


def load_reference(folder: Path):
    """The transformers model for a fixture, in fp32 (the numerical reference)."""
    from edgepack.converters.reference import load_transformers

    return load_transformers(folder)
