"""Full-size synthetic checkpoints: write time, peak RSS of the writer, and a forward pass of the
text decoder in transformers (bf16) to show activations stay finite through every layer.

    .venv/bin/python benchmarks/synth_full_size.py --preset gemma-3n-E2B [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgepack.converters.reference import load_transformers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gemma-3n-E2B", choices=["gemma-3n-E2B", "gemma-3n-E4B"])
    ap.add_argument("--keep", help="write the checkpoint here and keep it")
    args = ap.parse_args()
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="synth-")) / args.preset
    exe = Path(sys.executable).parent / "edgepack"
    t0 = time.time()
    proc = subprocess.Popen([str(exe), "synth", "--preset", args.preset, "-o", str(out), "--force"],
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit("synth failed")
    secs, rss = time.time() - t0, usage.ru_maxrss / 2**20
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**30
    print(f"{args.preset}: wrote {size:.1f} GiB in {secs:.0f} s, writer peak RSS {rss:.2f} GiB")
    try:
        model = load_transformers(out, dtype=torch.bfloat16)
        with torch.no_grad():
            o = model(torch.tensor([[2, 818, 5279, 529, 7001, 563]]), output_hidden_states=True)
        rms = [float(h.float().pow(2).mean().sqrt()) for h in o.hidden_states]
        print("hidden-state RMS by layer:", " ".join(f"{r:.2f}" for r in rms))
        print("logits finite:", bool(torch.isfinite(o.logits).all()), "std", float(o.logits.float().std()))
    finally:
        if not args.keep:
            shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
