"""MatFormer slicing at full size, on a synthetic Gemma 3n E4B (random weights, the real layout).

    .venv/bin/python benchmarks/matformer_slices.py [--e4b DIR] [--work DIR] [--slices E2B,E2.98B,E3.59B] [--export]

1. `edgepack synth --preset gemma-3n-E4B` (unless --e4b names one already written);
2. `edgepack slice` of each slice, each in its own process: wall time and peak RSS (the child's
   rusage), the checkpoint's size;
3. the official E2B slice against E2B's real layout (transformers' classes configured as
   google/gemma-3n-E2B: synth's preset): tensor names, shapes and the sliced config keys, and the
   parameter counts the MatFormer Lab notebook prints for its E2B (the vision tower, which timm
   builds and this machine can't, is in its total only).

With --export (instead of steps 2-3), for the full E4B and each slice, cut while exporting (`export --matformer`, no
sliced checkpoint written), int4 ONNX at 4,096 tokens:
4. the export's wall time and peak RSS, the bundle's size;
5. `edgepack profile BUNDLE`: the runtime peak predicted vs measured (512-token prompt, 64 tokens);
6. `edgepack bench BUNDLE`: prefill and decode tok/s (512 + 64 tokens);
7. `edgepack eval SLICE --reference E4B`: top-1 agreement and mean KL of each slice's next-token
   distribution against the full model's over 128 tokens of text. The weights are random, so this
   is a sanity figure (how far cutting moves the output), not a quality figure.

Prints one JSON line per slice and a summary; docs/matformer.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path


def run(args: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one edgepack command in a child process (its own rusage)."""
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "edgepack.cli", *args])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"edgepack {' '.join(args)} failed ({child.returncode})")
    return time.perf_counter() - t0, usage.ru_maxrss * 1024


def json_of(args: list[str]) -> dict:
    """An edgepack command's --json output (its progress goes to stderr, shown)."""
    proc = subprocess.run([sys.executable, "-m", "edgepack.cli", *args, "--json"], stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"edgepack {' '.join(args)} failed ({proc.returncode})")
    return json.loads(proc.stdout)


def exported(e4b: Path, name: str, work: Path) -> dict:
    """Steps 4-6 for one model: "E4B" is the checkpoint itself, any other name a slice of it."""
    out = work / f"bundle-{name}"
    cut = [] if name == "E4B" else ["--matformer", name]
    wall, peak = run(["export", str(e4b), *cut, "--format", "onnx", "--quant", "int4", "--max-context", "4096",
                      "-o", str(out), "--force"])
    prof = json_of(["profile", str(out), "--prompt-tokens", "512", "--tokens", "64"])
    bench = json_of(["bench", str(out), "--prefill", "512", "--decode", "64"])["engines"]["edgepack"]
    return {"model": name, "export_wall_s": round(wall, 1), "export_peak_rss_mib": round(peak / 2**20),
            "bundle_mib": round(sum(f.stat().st_size for f in out.iterdir()) / 2**20),
            "runtime_peak_predicted_mib": round(prof["predicted"]["peak"] / 2**20),
            "runtime_peak_measured_mib": round(prof["measured"]["peak_rss"] / 2**20),
            "predicted_over_measured": round(prof["predicted"]["peak"] / prof["measured"]["peak_rss"], 3),
            "prefill_tok_s": round(bench["prefill_tok_s"], 2), "decode_tok_s": round(bench["decode_tok_s"], 2)}


def drift(work: Path, name: str) -> dict:
    """Step 7: the slice's bundle against the full model's on the same 128 tokens."""
    r = json_of(["eval", str(work / f"bundle-{name}"), "--reference", str(work / "bundle-E4B"),
                 "--text", "/usr/share/common-licenses/GPL-3", "--tokens", "128"])
    return {"model": name, "top1_agreement_with_E4B": round(r["top1_agreement"], 3),
            "mean_kl_from_E4B": round(r["mean_kl"], 3)}


def shapes_of(folder: Path) -> dict:
    from edgepack.converters.safetensors_file import SafetensorsFile

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= {n: t[1] for n, t in SafetensorsFile(f).tensors.items()}
    return out


def write_chart(path: Path, fmt: str = "litertlm", measured: list[dict] | None = None) -> None:
    """`edgepack profile --preset gemma-3n-E4B --quant int4 --context 4096 --matformer all`'s chart,
    with the exported bundles' measured peaks and decode speeds where given (step 5-6's rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgepack.report import slices_chart
    from edgepack.slices import format_table, slices_table

    r = slices_table(None, "gemma-3n-E4B", "int4", fmt, 4096, 128, device="android-6gb")
    print(format_table(r))
    ran = {m["model"]: {"peak": m["runtime_peak_measured_mib"] * 2**20, "decode_tok_s": m["decode_tok_s"]}
           for m in measured or []}
    slices_chart(plt, r, ran).savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--e4b", type=Path, help="a synthetic E4B checkpoint already written")
    p.add_argument("--work", type=Path, default=Path("matformer-work"))
    p.add_argument("--slices", default="E2B,E2.98B,E3.59B")
    p.add_argument("--export", action="store_true", help="export E4B and each slice (int4 ONNX, 4,096 tokens) "
                                                          "and measure them (steps 4-7) instead of step 2-3")
    p.add_argument("--chart", type=Path, help="also write the planned table's chart (int4, 4,096 tokens; "
                                              ".litertlm, or with --export ONNX with the measured runs) as a PNG")
    a = p.parse_args()
    if a.chart and not a.export:
        write_chart(a.chart)
    if not a.slices:
        return

    from edgepack.converters.matformer import SLICED_KEYS, effective_params
    from edgepack.converters.synth import layout

    a.work.mkdir(parents=True, exist_ok=True)
    e4b = a.e4b or a.work / "gemma-3n-E4B"
    if a.e4b is None and not (e4b / "config.json").exists():
        wall, peak = run(["synth", "--preset", "gemma-3n-E4B", "-o", str(e4b)])
        print(json.dumps({"step": "synth E4B", "wall_s": round(wall, 1), "peak_rss_mib": round(peak / 2**20)}))
    for name in [] if a.export else a.slices.split(","):
        out = a.work / f"gemma-3n-{name}"
        wall, peak = run(["slice", str(e4b), "--config", name, "-o", str(out), "--force"])
        shapes = shapes_of(out)
        text = {"model." + k.split(".", 2)[2]: v for k, v in shapes.items() if k.startswith("model.language_model.")}
        row = {"slice": name, "wall_s": round(wall, 1), "peak_rss_mib": round(peak / 2**20),
               "checkpoint_gib": round(sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**30, 2),
               "effective_params": effective_params(text), "text_params": sum(math.prod(s) for s in text.values()),
               "all_params": sum(math.prod(s) for s in shapes.values())}
        if name == "E2B":
            config, want = layout("gemma-3n-E2B")
            got = json.loads((out / "config.json").read_text())["text_config"]
            row["same_layout_as_E2B"] = shapes == want
            row["same_config_as_E2B"] = all(got[k] == config["text_config"][k] for k in SLICED_KEYS)
            row["notebook_counts"] = (row["effective_params"], row["text_params"]) == (1_905_495_648, 4_456_156_768)
        print(json.dumps(row), flush=True)
    if a.export:
        rows = [exported(e4b, name, a.work) for name in ["E4B", *a.slices.split(",")]]
        for row in rows:
            print(json.dumps(row), flush=True)
        if a.chart:  # the ONNX plan, with these runs on it
            write_chart(a.chart, "onnx", rows)
        for name in a.slices.split(","):
            print(json.dumps(drift(a.work, name)), flush=True)


if __name__ == "__main__":
    main()
