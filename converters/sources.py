"""Reading what a user has in hand: a Hugging Face checkpoint folder or a GGUF file, opened as a
`Source` (source.py). Nothing here runs code from the checkpoint: no pickle, no trust_remote_code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgepack.converters import families
from edgepack.converters.models.gemma3n_audio import EMBEDDER, TOWER, VISION_EMBEDDER
from edgepack.converters.gguf_source import open_gguf
from edgepack.converters.safetensors_file import SafetensorsFile
from edgepack.converters.source import Source
from edgepack.errors import EdgepackError


AUDIO_PREFIXES = (TOWER, EMBEDDER)  # a checkpoint with these has an audio path to export
# ... which reads embed_vision too: its ids' rows go into the multimodal vocabulary (gemma3n_audio.vocab_table)
MULTIMODAL_PREFIXES = AUDIO_PREFIXES + (VISION_EMBEDDER,)


def open_source(path: str | Path) -> Source:
    p = Path(path).expanduser()
    if not p.exists():
        raise EdgepackError(f"source not found: {p}")
    if p.is_file() and p.suffix == ".gguf":
        return open_gguf(p)
    if p.is_dir():
        return _open_hf_dir(p)
    raise EdgepackError(f"{p} is neither a Hugging Face checkpoint folder nor a .gguf file")


def _open_hf_dir(p: Path) -> Source:
    cfg_path = p / "config.json"
    if not cfg_path.exists():
        raise EdgepackError(f"{p} is not a Hugging Face checkpoint: no config.json")
    try:
        full = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise EdgepackError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(full, dict):
        raise EdgepackError(f"{cfg_path} is not a Hugging Face config (a JSON object is expected)")
    archs = full.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else "<none>"
    family = families.for_architecture(arch)
    prefix, text_key = family.architectures[arch]
    if text_key and not isinstance(full.get(text_key), dict):
        raise EdgepackError(f"{cfg_path}: a {arch} config needs its text decoder's settings under {text_key!r}")
    config = dict(full[text_key]) if text_key else full
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        config.setdefault(key, full.get(key))
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise EdgepackError(f"{p} has no .safetensors weights (pickled .bin checkpoints are refused)")

    handles = [SafetensorsFile(f) for f in files]
    where, skipped = {}, set()
    for h in handles:
        for name in h.tensors:
            if name.startswith(prefix):
                where["model." + name[len(prefix):]] = (h, name)
            elif name.startswith(MULTIMODAL_PREFIXES) and isinstance(full.get("audio_config"), dict):
                where[name] = (h, name)  # Gemma 3n's audio tower and embedder, by their own names
            elif not name.startswith("lm_head"):
                skipped.add(name.split(".")[1] if name.startswith("model.") else name.split(".")[0])

    def tensor(name: str) -> tuple[SafetensorsFile, str]:
        if name not in where:
            raise EdgepackError(f"checkpoint {p} has no tensor {prefix}{name[len('model.'):]}")
        return where[name]

    def read(name: str) -> np.ndarray:
        h, key = tensor(name)
        return h.read(key)

    def read_rows(name: str, start: int, stop: int) -> np.ndarray:
        h, key = tensor(name)
        return h.read_rows(key, start, stop)

    def storage(name: str) -> str:
        h, key = tensor(name)
        return h.dtype(key)

    tokenizer_json, template = _hf_tokenizer(p)
    shapes = {name: h.shape(key) for name, (h, key) in where.items()}
    audio = None
    if any(n.startswith(AUDIO_PREFIXES) for n in where):
        audio = {"config": full, "preprocessor": _json_object(p / "preprocessor_config.json"),
                 "shapes": {n: s for n, s in shapes.items() if n.startswith(MULTIMODAL_PREFIXES)}}
    return Source(p, family, arch, config, read, lambda: tokenizer_json, template, sorted(skipped), "safetensors",
                  storage, shapes=shapes, read_rows=read_rows, audio=audio)


def _json_object(path: Path) -> dict | None:
    """A JSON object file, or None when there is none."""
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgepackError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise EdgepackError(f"{path}: a JSON object is expected")
    return raw


def _hf_tokenizer(p: Path) -> tuple[str, str | None]:
    """tokenizer.json text and the chat template (tokenizer_config.json or chat_template.jinja)."""
    tj = p / "tokenizer.json"
    if not tj.exists():
        raise EdgepackError(f"{p} has no tokenizer.json")
    template = None
    if (p / "chat_template.jinja").exists():
        template = (p / "chat_template.jinja").read_text()
    elif (p / "tokenizer_config.json").exists():
        template = json.loads((p / "tokenizer_config.json").read_text()).get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return tj.read_text(), template
