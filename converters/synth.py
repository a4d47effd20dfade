"""`edgepack synth`: random-weight checkpoints with exactly the real layout, for memory and speed
work at full size without downloading weights.

Tensor names and shapes come from transformers' own classes built on the `meta` device (nothing
allocated), plus what the real checkpoints carry that transformers drops on load: the K/V
projections and K norm of the KV-shared layers. Files are bf16 safetensors in
`model-0000K-of-0000N.safetensors` shards with an index, written tensor by tensor in chunks, so peak
memory is one chunk, not the model. The vision tower (timm MobileNet-V5) can't be built here and is
never written; the audio tower and the multimodal embedders are, unless `towers=False`.

Weights are N(0, 1/fan_in) so activations keep a sane scale through every layer; norm scales are
1 (Gemma 3n multiplies by them) or 0 (Gemma 3 stores `w` for `1 + w`). The text is meaningless;
memory and speed are real.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgepack.converters.safetensors_file import write_shards
from edgepack.errors import EdgepackError

CHUNK = 1 << 24  # values generated at a time

_GEMMA3N_COMMON = dict(hidden_size=2048, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                       vocab_size=262_400, vocab_size_per_layer_input=262_144, hidden_size_per_layer_input=256)
PRESETS = {
    "gemma-3n-E2B": ("gemma3n", dict(_GEMMA3N_COMMON, num_hidden_layers=30, intermediate_size=[8192] * 30,
                                     num_kv_shared_layers=10)),
    "gemma-3n-E4B": ("gemma3n", dict(_GEMMA3N_COMMON, num_hidden_layers=35, intermediate_size=[16384] * 35,
                                     num_kv_shared_layers=15)),
    "gemma-3-270m": ("gemma3", dict(vocab_size=262_144, hidden_size=640, intermediate_size=2048,
                                    num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                                    head_dim=256, sliding_window=512, query_pre_attn_scalar=256,
                                    max_position_embeddings=32768, rope_theta=1_000_000.0)),
}


def layout(preset: str, towers: bool = True) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(config.json, {tensor name: shape}) of the real checkpoint for `preset`."""
    if preset not in PRESETS:
        raise EdgepackError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    family, overrides = PRESETS[preset]
    if family == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(**overrides)
        with torch.device("meta"):
            sd = Gemma3ForCausalLM(cfg).state_dict()
        config = cfg.to_dict() | {"architectures": ["Gemma3ForCausalLM"], "torch_dtype": "bfloat16"}
        return config, {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("lm_head")}

    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nForCausalLM, Gemma3nTextConfig
    from transformers import Gemma3nVisionConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nMultimodalEmbedder

    text, audio, vision = Gemma3nTextConfig(**overrides), Gemma3nAudioConfig(), Gemma3nVisionConfig()
    shapes = {}
    with torch.device("meta"):
        lm = Gemma3nForCausalLM(text)
        for k, v in lm.state_dict().items():
            if k.startswith("model."):
                shapes["model.language_model." + k[len("model."):]] = tuple(v.shape)
        if towers:
            for prefix, module in (("model.audio_tower.", Gemma3nAudioEncoder(audio)),
                                   ("model.embed_audio.", Gemma3nMultimodalEmbedder(audio, text)),
                                   ("model.embed_vision.", Gemma3nMultimodalEmbedder(vision, text))):
                shapes |= {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}
    kv, d, h = text.num_key_value_heads, text.head_dim, text.hidden_size
    for i in range(text.num_hidden_layers - text.num_kv_shared_layers, text.num_hidden_layers):
        p = f"model.language_model.layers.{i}.self_attn."
        shapes |= {p + "k_proj.weight": (kv * d, h), p + "v_proj.weight": (kv * d, h), p + "k_norm.weight": (d,)}
    config = Gemma3nConfig(text_config=text.to_dict(), audio_config=audio.to_dict(),
                           vision_config=vision.to_dict()).to_dict()
    config |= {"architectures": ["Gemma3nForConditionalGeneration"], "torch_dtype": "bfloat16"}
    return config, dict(sorted(shapes.items()))


def _fill(name: str, shape: tuple[int, ...], family: str) -> float | None:
    """Constant value for 1-D scales (None: draw random)."""
    if len(shape) != 1:
        return None
    if name.endswith("norm.weight") or name.endswith("correct_output_scale"):
        return 0.0 if family == "gemma3" else 1.0
    return 0.0  # biases and other vectors


def synth(preset: str, out: Path, seed: int = 0, towers: bool = True, force: bool = False, log=print) -> Path:
    from edgepack.bundle import staging
    from edgepack.converters.builtin import gemma_tokenizer_json

    config, shapes = layout(preset, towers)  # validates the preset name
    family = PRESETS[preset][0]
    total = sum(math.prod(s) for s in shapes.values())
    log(f"{preset}: {len(shapes)} tensors, {total / 1e9:.3f}B parameters, {2 * total / 2**30:.1f} GiB bf16")
    rng = np.random.default_rng(seed)

    def values(name: str):
        shape = shapes[name]
        n, const = math.prod(shape), _fill(name, shape, family)
        std = 1.0 / math.sqrt(math.prod(shape[1:]) or 1)
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            yield np.full(m, const, np.float32) if const is not None else rng.standard_normal(m, np.float32) * std

    with staging(Path(out), force, complete_when="config.json") as stage, \
            tqdm(total=total, unit="param", unit_scale=True, desc="writing", disable=None) as bar:  # a terminal only
        write_shards(stage, {name: ("BF16", shape) for name, shape in shapes.items()}, values, bar.update)
        (stage / "tokenizer.json").write_text(gemma_tokenizer_json(config.get("text_config", config)["vocab_size"]))
        if "audio_config" in config and towers:  # the audio frontend's settings, as the real checkpoints ship them
            from transformers import Gemma3nAudioFeatureExtractor

            Gemma3nAudioFeatureExtractor().to_json_file(stage / "preprocessor_config.json")
        (stage / "config.json").write_text(json.dumps(config, indent=2))  # last: marks the checkpoint complete
    return Path(out)
