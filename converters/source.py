"""A checkpoint as the converters see it, whatever its file format (sources.py opens one).

A `Source` gives the text decoder's config (as the Hugging Face config.json dict), tensors by
Hugging Face name, read when asked (safetensors with pread, a tensor or a block of rows at a time;
GGUF tensors dequantized on demand), the tokenizer as a tokenizer.json string (made when first asked), the chat template if
the checkpoint has one, and the special ids.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable

import numpy as np

from edgepack.converters.models.family import Family


@dataclasses.dataclass
class Source:
    path: Path
    family: Family  # converters/models/family.py
    architecture: str
    config: dict  # the text decoder's HF config
    read: Callable[[str], np.ndarray]  # HF name ("model....") -> float32 array
    # tokenizer.json text, made when first asked (`tokenizer_json`): a GGUF's is converted from its
    # vocabulary, which planning and profiling don't need
    load_tokenizer: Callable[[], str]
    chat_template: str | None
    skipped: list[str]  # components left out, e.g. vision/audio towers
    kind: str  # "safetensors" | "gguf"
    # how a tensor is stored at the source ("BF16", "F32", "Q4_K", ...) and, for GGUF, its raw
    # quantized blocks (so a quantizer can keep that grid instead of rounding again)
    storage: Callable[[str], str] = lambda name: "F32"
    raw: Callable[[str], object] | None = None
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # HF name -> shape
    read_rows: Callable[[str, int, int], np.ndarray] | None = None  # rows [start, stop) as float32
    # Gemma 3n with an audio tower: {"config": the whole config.json, "preprocessor": its
    # preprocessor_config.json or None, "shapes": the tower's and embed_audio's tensors}; they are
    # read by their own names
    audio: dict | None = None

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

    @functools.cached_property
    def tokenizer_json(self) -> str:
        return self.load_tokenizer()

    @property
    def bos_id(self) -> int:
        return int(self.config.get("bos_token_id", 2))

    @property
    def eos_ids(self) -> list[int]:
        eos = self.config.get("eos_token_id", 1)
        ids = eos if isinstance(eos, list) else [eos]
        return sorted({int(i) for i in ids})
