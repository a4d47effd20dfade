"""Peak RSS of each step of one piece of a Gemma 3n `.litertlm` export: the exit (final norm, the
tied LM head, softcap), which holds the export's largest float weight, side by side for the two
ways of rounding its LM head.

    .venv/bin/python benchmarks/exit_piece_memory.py CHECKPOINT [--quant int4|int4-head4|RECIPE.json]

- edgepack (what `converters/litertlm_pieces.export_main` does): convert with litert-torch with 64
  rows of the head standing in for it, round every row in a block at a time (`convert_exit`), then
  ai-edge-quantizer on the rest;
- ai-edge-quantizer: read the whole head, convert, then ai-edge-quantizer on the whole piece.

Each way runs in its own process (peaks are per process), sampling its RSS every 50 ms; the table
gives the highest RSS seen during each step and each way's peak over the other's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WAYS = ("edgepack", "ai-edge-quantizer")


def run_one(a) -> dict[str, int]:
    """One way, in this process: {step: peak RSS in bytes}."""
    from edgepack.converters import litertlm_pieces, quant_plan, recipes, sources, tflite_quant
    from edgepack.converters.decoder import load_weights
    from edgepack.converters.planner import plan_export

    step, peaks = ["setup"], {}

    def sample() -> None:
        while True:
            with open("/proc/self/status") as f:
                rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
            peaks[step[0]] = max(peaks.get(step[0], 0), rss)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    src = sources.open_source(a.checkpoint)
    p = plan_export(src.family, src.config, recipes.load(a.quant), "litertlm", a.max_context, a.prefill_len,
                    src.storage)
    model, cfg, lengths = p.decoder, p.config, p.graph.cache_lengths
    plans = quant_plan.main_model_plans(p.tensors)
    spec = p.family.litertlm_pieces(model, cfg, a.prefill_len, lengths)[-1]  # the exit
    rest = [n for n in spec.params if n != quant_plan.EMBEDDING or a.way != "edgepack"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "exit.tflite"
        step[0] = "read weights"
        load_weights(model, src, only=set(rest), progress=None)
        if a.way == "edgepack":
            step[0] = "convert, head rounded in"
            litertlm_pieces.convert_exit(spec, cfg, src, plans[quant_plan.EMBEDDING], a.prefill_len, lengths,
                                         a.max_context, out)
        else:
            step[0] = "convert (litert-torch)"
            litertlm_pieces.convert(spec, cfg, a.prefill_len, lengths, a.max_context, out)
        step[0] = "quantize (ai-edge-quantizer)"
        params = dict(model.named_parameters())
        tflite_quant.quantize_file(out, plans, {n: params[n].detach().numpy() for n in rest})
        step[0] = "done"
        time.sleep(0.2)
    return {name: rss for name, rss in peaks.items() if name != "done"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--quant", default="int4-head4")
    p.add_argument("--max-context", type=int, default=4096)
    p.add_argument("--prefill-len", type=int, default=128)
    p.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # the child process's one way
    a = p.parse_args()
    if a.way:
        print(json.dumps(run_one(a)))
        return
    results = {}
    for way in WAYS:
        cmd = [sys.executable, __file__, a.checkpoint, "--quant", a.quant, "--max-context", str(a.max_context),
               "--prefill-len", str(a.prefill_len), "--way", way]
        done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        results[way] = json.loads(done.stdout.strip().splitlines()[-1])
    steps = list(dict.fromkeys(s for way in WAYS for s in results[way]))
    print(f"{a.checkpoint}, exit piece, --quant {a.quant}: peak RSS per step (MiB)")
    print(f"  {'step':<36}" + "".join(f"{w:>20}" for w in WAYS))
    for s in steps:
        print(f"  {s:<36}" + "".join(f"{results[w][s] / 2**20:>20,.0f}" if s in results[w] else f"{'-':>20}"
                                     for w in WAYS))
    peak = {w: max(results[w].values()) for w in WAYS}
    print(f"  {'peak':<36}" + "".join(f"{peak[w] / 2**20:>20,.0f}" for w in WAYS))
    print(f"  edgepack / ai-edge-quantizer: {peak['edgepack'] / peak['ai-edge-quantizer']:.2f}x")


if __name__ == "__main__":
    main()
