"""Writes docs/benchmarks.md: Gemma 3 270M (real weights), both bundle formats at int8 and int4,
`edgepack bench --compare` on each, with every peer that is installed, plus perplexity on GPL-3.

    .venv/bin/python benchmarks/write_benchmarks.py [--threads 2] [--skip-eval]

Bundles are exported into bundles/270m-{format}-{quant} when missing (--reexport to redo them).
Peers: LiteRT-LM comes with the venv; benchmarks/build_peers.sh builds llama.cpp and
onnxruntime-genai once. Each figure is the median of 5 runs per engine, alternating (edgepack bench).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPL3 = Path("/usr/share/common-licenses/GPL-3")
# Sections below this line were measured apart (dated) and are kept when the file is regenerated
KEPT = "<!-- measured apart, kept by write_benchmarks.py -->"
RUNS = [("litertlm", "int8"), ("litertlm", "int4"), ("onnx", "int8"), ("onnx", "int4"),
        ("onnx", "int4-at-ort-genai-size")]
# Recipe files beside this script, by the name a row gives them. onnxruntime-genai's int4 build
# holds every matmul and the tied head in 4-bit blocks of 32; this recipe writes the same, so its
# decode compares at equal bytes (bench.peer_bits pairs it with that build).
RECIPES = {"int4-at-ort-genai-size": Path(__file__).with_name("int4-at-ort-genai-size.json")}


def edgepack(*args: str) -> str:
    exe = Path(sys.executable).parent / "edgepack"
    proc = subprocess.run([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"edgepack {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def versions() -> str:
    names = ["ai-edge-litert", "onnxruntime", "litert-lm-api", "numpy"]
    out = [f"{n} {metadata.version(n)}" for n in names]
    from edgepack import peers

    for name, folder in [("llama-cpp-python", peers.llama_cpp_dir()), ("onnxruntime-genai", peers.ort_genai_dir())]:
        if folder.is_dir():
            out.append(f"{name} {folder.name.rsplit('-', 1)[1]} (peer)")
    return ", ".join(out)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _components(fmt: str, quant: str) -> dict:
    """What the bundle's manifest says each component is stored as (precisions and bytes)."""
    manifest = json.loads((ROOT / "bundles" / f"270m-{fmt}-{quant}" / "manifest.json").read_text())
    return manifest["precision"]["components"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--reexport", action="store_true")
    ap.add_argument("--skip-eval", action="store_true", help="leave perplexity out (saves ~2 minutes a bundle)")
    a = ap.parse_args()

    rows, ppl = {}, {}
    for fmt, quant in RUNS:
        folder = ROOT / "bundles" / f"270m-{fmt}-{quant}"
        if a.reexport or not (folder / "manifest.json").exists():
            print(f"exporting {folder.name} ...", flush=True)
            edgepack("export", "gemma-3-270m", "--format", fmt, "--quant", str(RECIPES.get(quant, quant)), "-o", str(folder), "--force")
        print(f"bench {folder.name} ...", flush=True)
        rows[fmt, quant] = json.loads(edgepack("bench", str(folder), "--compare", "--json", "--threads", str(a.threads)))
        if not a.skip_eval:
            print(f"eval {folder.name} ...", flush=True)
            ppl[fmt, quant] = json.loads(edgepack("eval", str(folder), "--text", str(GPL3), "--json"))["perplexity"]

    lines = [
        "# Benchmarks: Gemma 3 270M on this machine",
        "",
        f"Written by `.venv/bin/python benchmarks/write_benchmarks.py --threads {a.threads}` on "
        f"{datetime.date.today().isoformat()}.",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores visible, {a.threads} threads; Python "
        f"{platform.python_version()}; {versions()}.",
        "Prompt: the first 512 tokens of GPL-3, then 128 greedy tokens, a 2,048-token KV cache for every "
        "engine; prefill tok/s is prompt tokens over the prefill alone, time to first token runs from the "
        "token ids to the first generated token (edgepack/bench.py). Every engine runs in its own process "
        "(peak RSS is that process's), 5 times, alternating; each figure is the median, the min-max in "
        "brackets, and the ratios are of medians of the same run.",
        "",
        "| bundle | engine | weights | load s | TTFT s | prefill tok/s | decode tok/s | peak RSS MiB | "
        "edgepack / peer: prefill, TTFT, decode |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(e: dict, key: str, fmt: str) -> str:
        low, high = e["spread"][key]
        return f"{fmt.format(e[key])} ({fmt.format(low)}-{fmt.format(high)})"

    for (fmt, quant), r in rows.items():
        ours = r["engines"]["edgepack"]
        for name, e in r["engines"].items():
            weights = e.get("weights", "this bundle")
            ratio = "" if name == "edgepack" else (
                f"{ours['prefill_tok_s'] / e['prefill_tok_s']:.2f}x, {ours['ttft_s'] / e['ttft_s']:.2f}x, "
                f"{ours['decode_tok_s'] / e['decode_tok_s']:.2f}x")
            lines.append(f"| {fmt} {quant} | {name} | {weights} | {cell(e, 'load_s', '{:.2f}')} | "
                         f"{cell(e, 'ttft_s', '{:.3f}')} | {cell(e, 'prefill_tok_s', '{:.0f}')} | "
                         f"{cell(e, 'decode_tok_s', '{:.1f}')} | {e['peak_rss_mib']:,.0f} | {ratio} |")
    same = [fmt for fmt in ("onnx", "litertlm") if (fmt, "int8") in rows and _components(fmt, "int8") == _components(fmt, "int4")]
    if same:  # the recipes keep a GGUF's own 4- and 6-bit grids where the format can hold them
        lines += ["", f"The {' and '.join(same)} int8 and int4 bundles hold the same tensors: both recipes keep the "
                  "GGUF's own Q4_K / Q6_K grids where the format can hold them (`source_grid: keep`, "
                  "docs/quantization.md), and the rest is int8 in both."]
    if ("onnx", "int4-at-ort-genai-size") in rows:
        lines += ["", "`onnx int4-at-ort-genai-size` is the recipe `benchmarks/int4-at-ort-genai-size.json`: what "
                  "onnxruntime-genai's builder writes at `-p int4` (every matmul and the tied embedding / LM head in "
                  "4-bit blocks of 32), so that decode compares at the same bytes per token; the shipped `int4` "
                  "keeps 8 bits where the GGUF has them and an 8-bit head, for quality (perplexity below)."]
    loads = [x for r in rows.values() for x in (r["load_average"]["before"][0], r["load_average"]["after"][0])]
    lines += ["", f"Load average (1 min) before and after each bundle's runs: {min(loads):.2f}-{max(loads):.2f}."]
    lines += ["", "## Decode roofline", "",
              "Bytes one decode step reads (every weight of the decode graph, the tied embedding as LM head, "
              "and the whole KV cache) over the read bandwidth measured at the same thread count.", "",
              "| bundle | MiB per token | read GB/s | limit tok/s | edgepack decode | share of the limit |",
              "|---|---|---|---|---|---|"]
    for (fmt, quant), r in rows.items():
        rf, ours = r["roofline"], r["engines"]["edgepack"]
        lines.append(f"| {fmt} {quant} | {rf['decode_bytes'] / 2**20:,.0f} | {rf['read_bandwidth_gb_s']:.1f} | "
                     f"{rf['decode_tok_s_limit']:.0f} | {ours['decode_tok_s']:.1f} | "
                     f"{ours['decode_tok_s'] / rf['decode_tok_s_limit']:.0%} |")
    if ppl:
        from edgepack.converters.builtin import gemma_gguf
        from edgepack.converters.reference import perplexity

        fp32 = perplexity(gemma_gguf(), GPL3.read_text())
        lines += ["", "## Perplexity", "",
                  f"`<bos>` + the first 2,047 tokens of GPL-3 (`edgepack eval BUNDLE --text {GPL3}`); "
                  f"transformers fp32 on the same GGUF: {fp32:.3f}. Gates: int8 within 1%, int4 within 3%.", "",
                  "| bundle | perplexity | vs fp32 |", "|---|---|---|"]
        for (fmt, quant), p in ppl.items():
            lines.append(f"| {fmt} {quant} | {p:.3f} | {p / fp32 - 1:+.1%} |")
    skipped = {name: why for r in rows.values() for name, why in r.get("skipped", {}).items()
               if name not in ("litert-lm",)}
    if skipped:
        lines += ["", "Skipped peers: " + "; ".join(f"{n}: {w}" for n, w in skipped.items()) + "."]
    out = Path(a.out)
    kept = out.read_text().split(KEPT, 1) if out.exists() else []
    tail = ["", KEPT + kept[1].rstrip("\n")] if len(kept) == 2 else []
    out.write_text("\n".join(lines + tail) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
