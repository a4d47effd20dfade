"""transformers as the numerical reference: the same checkpoint a bundle came from, in fp32.

The full multimodal Gemma 3n class can't be built here (its vision tower needs timm/torchvision),
so a `Gemma3nForConditionalGeneration` checkpoint is loaded as its text decoder,
`Gemma3nForCausalLM`, from the `model.language_model.*` tensors, with the input embedding the full
class applies to token ids (`MultimodalTokens`): the same computation for every id, multimodal ids
(>= 262,144) included.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch


def load_transformers(source: str | Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    p = Path(source)
    if p.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=dtype).eval()
    cfg = json.loads((p / "config.json").read_text())
    if cfg["architectures"][0] in ("Gemma3nForConditionalGeneration", "Gemma3ForConditionalGeneration"):
        return _text_decoder_of_multimodal(p, cfg, dtype)
    return AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype).eval()


def _text_decoder_of_multimodal(p: Path, cfg: dict, dtype: torch.dtype):
    """A text-only view of the checkpoint (its text config beside links to the same shards),
    loaded with the `model.language_model.` prefix mapped to the CausalLM's `model.`."""
    from transformers import AutoModelForCausalLM

    view = Path(tempfile.mkdtemp(prefix="edgepack-text-view-"))
    try:
        text = cfg["text_config"]
        arch = "Gemma3nForCausalLM" if cfg["architectures"][0].startswith("Gemma3n") else "Gemma3ForCausalLM"
        (view / "config.json").write_text(json.dumps(text | {"architectures": [arch]}))
        for f in p.glob("*.safetensors*"):
            (view / f.name).symlink_to(f.resolve())
        model = AutoModelForCausalLM.from_pretrained(str(view), dtype=dtype,
                                                     key_mapping={r"^model\.language_model\.": "model."})
    finally:
        shutil.rmtree(view, ignore_errors=True)
    if arch == "Gemma3nForCausalLM":
        model.model.embed_tokens = MultimodalTokens(model.model.embed_tokens, p, cfg, dtype)
    return model.eval()


class MultimodalTokens(torch.nn.Module):
    """embed_tokens as `Gemma3nModel.forward` applies it to token ids: an id of embed_vision's
    vocabulary takes embed_vision's embedding, one of embed_audio's (from its vocab_offset on)
    embed_audio's. The two are transformers' own `Gemma3nMultimodalEmbedder`, read from the
    checkpoint; a checkpoint without one keeps embed_tokens' rows for its ids, as the CausalLM does.

    Without it, the text decoder alone disagrees with the checkpoint's model wherever such an id is
    in the sequence (a random-weight model picks one greedily every thousand tokens or so)."""

    def __init__(self, text: torch.nn.Module, folder: Path, cfg: dict, dtype: torch.dtype):
        super().__init__()
        from safetensors import safe_open
        from transformers import Gemma3nAudioConfig, Gemma3nTextConfig, Gemma3nVisionConfig
        from transformers.models.gemma3n.modeling_gemma3n import Gemma3nMultimodalEmbedder

        self.text = text
        self.embedders = torch.nn.ModuleList()
        text_config = Gemma3nTextConfig(**cfg["text_config"])
        kinds = (("vision_config", Gemma3nVisionConfig, "model.embed_vision."),
                 ("audio_config", Gemma3nAudioConfig, "model.embed_audio."))
        found: dict[str, dict] = {prefix: {} for _, _, prefix in kinds}
        for f in folder.glob("*.safetensors"):  # each shard read once, for both embedders
            with safe_open(str(f), "pt") as h:
                for k in h.keys():
                    prefix = next((q for q in found if k.startswith(q)), None)
                    if prefix:
                        found[prefix][k[len(prefix):]] = h.get_tensor(k)
        for key, config_class, prefix in kinds:
            weights = found[prefix]
            if not weights or not isinstance(cfg.get(key), dict):
                continue
            embedder = Gemma3nMultimodalEmbedder(config_class(**cfg[key]), text_config)
            embedder.load_state_dict(weights)
            self.embedders.append(embedder.to(dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.text(ids)
        for e in self.embedders:
            mine = (ids >= e.vocab_offset) & (ids < e.vocab_offset + e.vocab_size)
            if mine.any():
                rows = e(input_ids=torch.where(mine, ids, e.vocab_offset))
                x = torch.where(mine[..., None], rows.to(x.dtype), x)
        return x


def all_position_logits(source: str | Path, ids: list[int], model=None) -> np.ndarray:
    """Logits for every position of `ids` in one forward pass, [T, V] (`model`: already loaded)."""
    model = model or load_transformers(source)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def perplexity(source: str | Path, text: str, tokens: int = 2048, model=None) -> float:
    """transformers' fp32 perplexity on `<bos>` + the text's first tokens-1 tokens, scored with the
    tokenizer edgepack writes into bundles (the one `edgepack eval` uses)."""
    from tokenizers import Tokenizer

    from edgepack.converters import sources

    src = sources.open_source(str(source))
    tok = Tokenizer.from_str(src.tokenizer_json)
    ids = [src.bos_id] + tok.encode(text, add_special_tokens=False).ids[: tokens - 1]
    logits = all_position_logits(source, ids[:-1], model)  # [T, 262144] float32: 2.1 GB at 2,048 tokens
    nll = 0.0
    for i in range(0, len(logits), 128):  # log_softmax works in float64: whole, it would take 4x that
        lp = torch.log_softmax(torch.from_numpy(logits[i:i + 128]).double(), -1).numpy()
        nll -= float(lp[np.arange(len(lp)), ids[i + 1:i + 1 + len(lp)]].sum())
    return float(np.exp(nll / len(logits)))
