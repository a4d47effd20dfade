"""transformers as the numerical reference: the same checkpoint a bundle came from, in fp32.

The full multimodal Gemma 3n class can't be built here (its vision tower needs timm/torchvision),
so a `Gemma3nForConditionalGeneration` checkpoint is loaded as its text decoder,
`Gemma3nForCausalLM`, from the `model.language_model.*` tensors: the same computation for text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def load_transformers(source: str | Path):
    from transformers import AutoModelForCausalLM

    p = Path(source)
    if p.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()
    cfg = json.loads((p / "config.json").read_text())
    if cfg["architectures"][0] in ("Gemma3nForConditionalGeneration", "Gemma3ForConditionalGeneration"):
        return _text_decoder_of_multimodal(p, cfg)
    return AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval()


def _text_decoder_of_multimodal(p: Path, cfg: dict):
    from safetensors.torch import load_file
    from transformers import Gemma3ForCausalLM, Gemma3nForCausalLM, Gemma3nTextConfig, Gemma3TextConfig

    gemma3n = cfg["architectures"][0].startswith("Gemma3n")
    text_cfg = (Gemma3nTextConfig if gemma3n else Gemma3TextConfig)(**cfg["text_config"])
    model = (Gemma3nForCausalLM if gemma3n else Gemma3ForCausalLM)(text_cfg)
    prefix = "model.language_model."
    sd = {}
    for f in sorted(p.glob("*.safetensors")):
        sd |= {"model." + k[len(prefix):]: v.float() for k, v in load_file(str(f)).items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if set(missing) - {"lm_head.weight"} or unexpected:
        raise ValueError(f"reference load: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.float().eval()


def all_position_logits(source: str | Path, ids: list[int]) -> np.ndarray:
    """Logits for every position of `ids` in one forward pass, [T, V]."""
    model = load_transformers(source)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()
