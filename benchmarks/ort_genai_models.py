"""Builds the onnxruntime-genai peer models for `edgepack bench --compare`: Gemma 3 270M (the
built-in GGUF, dequantized by transformers) through onnxruntime-genai's own model builder, at int8
and int4, into PEERS_DIR/onnxruntime-genai-models/gemma-3-270m-{int8,int4}.

    PYTHONPATH=~/.cache/edgepack/peers/onnxruntime-genai-0.18.0 .venv/bin/python benchmarks/ort_genai_models.py

(benchmarks/build_peers.sh runs it.) With `--score TEXT` it scores each built model instead, by
onnxruntime-genai's own runtime: the perplexity of <bos> + the first 2,047 tokens of TEXT, one
token at a time, as `edgepack eval` scores a bundle (what the builder's rounding costs).

The builder (0.18) reads transformers' config and fails on
transformers 5's nested RoPE settings (`KeyError: 'rope_type'`, no `rope_local_base_freq`), so its
config is flattened to the form it reads; the weights are untouched.
"""

from __future__ import annotations

import json
import runpy
import shutil
import sys
import tempfile
from pathlib import Path

from edgepack import peers


def save_dequantized(gguf: Path, out: Path) -> dict:
    """The GGUF's weights as transformers dequantizes them, saved as `out`/model.safetensors (fp32;
    the tied LM head is the embedding, saved once); returns the config for the caller to complete
    and write. transformers won't save_pretrained a model it read from a GGUF."""
    from safetensors.torch import save_file

    from edgepack.converters.reference import load_transformers

    model = load_transformers(gguf)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the GGUF origin; these weights are plain fp32
    return config


def hf_folder(out: Path) -> None:
    """The 270M as a transformers safetensors folder (fp32, dequantized from the GGUF)."""
    from transformers import AutoTokenizer

    from edgepack.converters.builtin import gemma_gguf

    gguf = gemma_gguf()
    config = save_dequantized(gguf, out)
    config["architectures"] = ["Gemma3ForCausalLM"]
    (out / "config.json").write_text(json.dumps(config, indent=1))
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)


def _flat_rope_config(original):
    def from_pretrained(*args, **kwargs):
        config = original(*args, **kwargs)
        rope = getattr(config, "rope_parameters", None)
        if isinstance(rope, dict) and "full_attention" in rope:
            config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
            config.rope_theta = rope["full_attention"]["rope_theta"]
            config.rope_parameters = dict(rope["full_attention"])
        return config

    return from_pretrained


def build(precision: str, hf: Path, out: Path) -> None:
    import transformers

    transformers.AutoConfig.from_pretrained = _flat_rope_config(transformers.AutoConfig.from_pretrained)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory() as cache:
        sys.argv = ["builder", "-i", str(hf), "-o", str(partial), "-p", precision, "-e", "cpu", "-c", cache]
        runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
    partial.rename(out)


def score(model_dir: Path, text: Path, tokens: int = 2048) -> tuple[float, int]:
    """(perplexity, positions scored) of `tokens` positions of `text` through the model."""
    import numpy as np
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    from edgepack.evaluate import read_text, token_nll

    config = json.loads((model_dir / "genai_config.json").read_text())
    raw = read_text(text, tokens)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = [config["model"]["bos_token_id"]] + tokenizer.encode(raw, add_special_tokens=False).ids[: tokens - 1]
    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    # its sliding-window layers refuse a cache shorter than their window
    window = config["model"]["decoder"].get("sliding_window", {}).get("window_size", 0)
    params.set_search_options(do_sample=False, max_length=max(len(ids) + 1, window))
    gen = og.Generator(model, params)
    nll = 0.0
    for i in range(len(ids) - 1):
        gen.append_tokens([ids[i]])
        nll += token_nll(np.asarray(gen.get_logits()).reshape(-1), ids[i + 1])
    return float(np.exp(nll / (len(ids) - 1))), len(ids) - 1


def main() -> None:
    root = peers.ort_genai_models_dir()
    if sys.argv[1:2] == ["--score"]:
        for precision in ("int8", "int4"):
            ppl, n = score(root / f"gemma-3-270m-{precision}", Path(sys.argv[2]))
            print(f"onnxruntime-genai {precision}: perplexity {ppl:.3f} over {n} tokens of {sys.argv[2]}")
        return
    todo = [p for p in ("int8", "int4") if not (root / f"gemma-3-270m-{p}" / "genai_config.json").exists()]
    if not todo:
        print(f"onnxruntime-genai models already built in {root}")
        return
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp)
        hf_folder(hf)
        for precision in todo:
            print(f"building the onnxruntime-genai {precision} model ...", flush=True)
            build(precision, hf, root / f"gemma-3-270m-{precision}")
    print(f"built: {root}")


if __name__ == "__main__":
    main()
