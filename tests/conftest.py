"""Session fixtures: the real Gemma tokenizer, tiny checkpoints, and bundles exported from them.

Every bundle is exported once per session through the same code path as `edgepack export`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import checkpoints  # noqa: E402

from edgepack.converters.builtin import gemma_gguf  # noqa: E402,F401  (tests import it from here)

TINY_CONTEXT = 64  # cache length of the tiny bundles
TINY_PREFILL = 8  # short prefill graph, so prompts longer than it go in chunks
MODELS = ("gemma3n_multimodal", "gemma3n_causal", "gemma3")
FORMATS = ("litertlm", "onnx")


@pytest.fixture(scope="session")
def tokenizer_json(tmp_path_factory) -> str:
    """The real Gemma 3 tokenizer (262,144 pieces), converted from the 270M GGUF by transformers."""
    from edgepack.converters.gguf_source import _tokenizer_json

    cache = Path(os.environ.get("EDGEPACK_TEST_CACHE", Path.home() / ".cache" / "edgepack-tests"))
    cached = cache / "gemma3-tokenizer.json"
    if not cached.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(_tokenizer_json(gemma_gguf()))
        tmp.rename(cached)
    return cached.read_text()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer_json):
    made = {}
    makers = {
        "gemma3n_multimodal": checkpoints.make_gemma3n_multimodal,
        "gemma3n_causal": checkpoints.make_gemma3n_causal,
        "gemma3": checkpoints.make_gemma3,
    }

    def get(name: str) -> Path:
        if name not in made:
            made[name] = makers[name](tmp_path_factory.mktemp("ckpt") / name, tokenizer_json)
        return made[name]

    return get


@pytest.fixture(scope="session")
def reference(checkpoint):
    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = checkpoints.load_reference(checkpoint(name))
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, checkpoint):
    from edgepack.converters.export import ExportOptions, export

    made = {}

    def get(name: str, fmt: str, quant: str = "none") -> Path:
        if (name, fmt, quant) not in made:
            out = tmp_path_factory.mktemp("bundle") / f"{name}-{fmt}-{quant}"
            opts = ExportOptions(format=fmt, quant=quant, max_context=TINY_CONTEXT, prefill_len=TINY_PREFILL)
            made[name, fmt, quant] = export(checkpoint(name), out, opts, log=lambda m: None)
        return made[name, fmt, quant]

    return get
