"""Reading what a user has in hand: a Hugging Face checkpoint folder or a GGUF file.

A `Source` gives the text config (as the HF config.json dict), tensors by Hugging Face name
(read lazily: safetensors are memory-mapped, GGUF tensors dequantized on demand), the tokenizer as
a tokenizer.json string, the chat template if the checkpoint has one, and the special ids.
Nothing here runs code from the checkpoint: no pickle, no trust_remote_code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np

from edgepack.converters.safetensors_file import SafetensorsFile
from edgepack.errors import EdgepackError

# architecture -> (family, prefix of the text decoder's tensors, where the text config sits)
ARCHITECTURES = {
    "Gemma3nForConditionalGeneration": ("gemma3n", "model.language_model.", "text_config"),
    "Gemma3nForCausalLM": ("gemma3n", "model.", None),
    "Gemma3ForCausalLM": ("gemma3", "model.", None),
    "Gemma3ForConditionalGeneration": ("gemma3", "model.language_model.", "text_config"),
}
SUPPORTED = ", ".join(ARCHITECTURES)


@dataclasses.dataclass
class Source:
    path: Path
    family: str  # "gemma3" | "gemma3n"
    architecture: str
    config: dict  # the text decoder's HF config
    read: Callable[[str], np.ndarray]  # HF name ("model....") -> float32 array
    tokenizer_json: str
    chat_template: str | None
    skipped: list[str]  # components left out, e.g. vision/audio towers
    kind: str  # "safetensors" | "gguf"
    # how a tensor is stored at the source ("BF16", "F32", "Q4_K", ...) and, for GGUF, its raw
    # quantized blocks (so a quantizer can keep that grid instead of rounding again)
    storage: Callable[[str], str] = lambda name: "F32"
    raw: Callable[[str], object] | None = None
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # HF name -> shape
    read_rows: Callable[[str, int, int], np.ndarray] | None = None  # rows [start, stop) as float32

    def row_chunks(self, name: str, max_bytes: int = 64 << 20):
        """A 2-D tensor as float32 row blocks of at most `max_bytes`, read one at a time, so a
        full-size table (E2B's PLE table is 7.9 GB in float32) is never whole in memory. Sources
        without row reads (GGUF: a tensor is dequantized whole) yield the tensor once."""
        if self.read_rows is None:
            yield self.read(name)
            return
        rows, cols = self.shapes[name]
        step = max(1, max_bytes // (4 * cols))
        for start in range(0, rows, step):
            yield self.read_rows(name, start, min(rows, start + step))

    @property
    def bos_id(self) -> int:
        return int(self.config.get("bos_token_id", 2))

    @property
    def eos_ids(self) -> list[int]:
        eos = self.config.get("eos_token_id", 1)
        ids = eos if isinstance(eos, list) else [eos]
        return sorted({int(i) for i in ids})


def open_source(path: str | Path) -> Source:
    p = Path(path).expanduser()
    if not p.exists():
        raise EdgepackError(f"source not found: {p}")
    if p.is_file() and p.suffix == ".gguf":
        from edgepack.converters.gguf_source import open_gguf

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
    arch = (full.get("architectures") or ["<none>"])[0]
    if arch not in ARCHITECTURES:
        raise EdgepackError(f"unsupported architecture {arch!r}; edgepack supports {SUPPORTED}")
    family, prefix, text_key = ARCHITECTURES[arch]
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
    return Source(p, family, arch, config, read, tokenizer_json, template, sorted(skipped), "safetensors",
                  storage, shapes=shapes, read_rows=read_rows)


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
