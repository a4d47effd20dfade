"""Session fixtures shared by tests/ and device_tests/: the real Gemma tokenizer, tiny checkpoints,
bundles exported from them, and the real Gemma 3 270M's quantized bundles.

Every bundle is exported once per session through the same code path as `edgepack export`, so the
device suite runs on the very bundles the host tests checked against transformers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "tests"))

import checkpoints  # noqa: E402
from checkpoints import TINY_CONTEXT, TINY_PREFILL  # noqa: E402

from edgepack.converters.builtin import gemma_gguf  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def litert_cache_folder(tmp_path_factory) -> Path:
    """The LiteRT engine's cached main models (runtime/litert_cache.py) go to the session's
    temporary folder, not the user's ~/.cache (child processes inherit it)."""
    folder = tmp_path_factory.mktemp("edgepack-cache")
    os.environ["EDGEPACK_CACHE"] = str(folder)
    return folder


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


@pytest.fixture(scope="session")
def bundle_270m(tmp_path_factory):
    """The real Gemma 3 270M exported with a named recipe and the CLI's defaults."""
    from edgepack.converters.export import ExportOptions, export

    made = {}

    def get(fmt: str, quant: str) -> Path:
        if (fmt, quant) not in made:
            out = tmp_path_factory.mktemp("b270") / f"270m-{fmt}-{quant}"
            made[fmt, quant] = export(gemma_gguf(), out, ExportOptions(format=fmt, quant=quant), log=lambda m: None)
        return made[fmt, quant]

    return get
