"""Peak RSS of each step of one piece of a Gemma 3n `.litertlm` export: the exit (final norm, the
tied LM head, softcap), which holds the export's peak.

    .venv/bin/python benchmarks/exit_piece_memory.py CHECKPOINT [--quant int4|int4-head4|RECIPE.json]

Does what `converters/litertlm_pieces.export_main` does for that piece alone (read its weights,
convert with litert-torch, quantize with ai-edge-quantizer), sampling this process's RSS every
50 ms, and prints the highest RSS seen during each step.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    from edgepack.converters import litertlm_pieces, quant_plan, recipes, sources, tflite_quant
    from edgepack.converters.export import ExportOptions, build_decoder, cache_lengths, load_weights, plan_weights

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--quant", default="int4")
    p.add_argument("--max-context", type=int, default=4096)
    p.add_argument("--prefill-len", type=int, default=128)
    a = p.parse_args()

    step, peaks = ["setup"], {}

    def sample() -> None:
        while True:
            with open("/proc/self/status") as f:
                rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
            peaks[step[0]] = max(peaks.get(step[0], 0), rss)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    src = sources.open_source(a.checkpoint)
    model, cfg = build_decoder(src, "tflite")
    plans = quant_plan.main_model_plans(plan_weights(model, src, recipes.load(a.quant), "litertlm"))
    opts = ExportOptions(format="litertlm", quant=a.quant, max_context=a.max_context, prefill_len=a.prefill_len)
    lengths = cache_lengths(cfg, opts)
    spec = litertlm_pieces.plan(model, cfg, a.prefill_len, lengths)[-1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "exit.tflite"
        step[0] = "read weights"
        load_weights(model, src, only=set(spec.params), progress=None)
        step[0] = "convert (litert-torch)"
        litertlm_pieces.convert(spec, cfg, a.prefill_len, lengths, a.max_context, out)
        step[0] = "quantize (ai-edge-quantizer)"
        params = dict(model.named_parameters())
        tflite_quant.quantize_file(out, plans, {n: params[n].detach().numpy() for n in spec.params})
        step[0] = "done"
        time.sleep(0.2)
    print(f"{a.checkpoint}, exit piece, --quant {a.quant}: peak RSS per step")
    for name, rss in peaks.items():
        if name != "done":
            print(f"  {name:<30} {rss / 2**20:>8,.0f} MiB")


if __name__ == "__main__":
    main()
