"""Predicted vs measured peak memory of bundles, per engine.

    .venv/bin/python benchmarks/memory_parts.py BUNDLE [BUNDLE ...] [--tokens 16]

For each bundle (and, for .litertlm, both LiteRT APIs) a fresh process loads it, generates greedily
and reports its high-water RSS (VmHWM); beside it, edgepack/footprint.py's prediction from the
manifest and its parts. The prediction assumes the whole context may fill; the KV cache is
allocated at full length anyway, so a short generation measures the same tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from edgepack.bundle import Bundle
from edgepack.footprint import MiB, predict
from edgepack.runtime.litert_engine import API_ENV

CHILD = """
import json, sys
from edgepack.runtime import Generator
gen = Generator(sys.argv[1], verify=False, memory_check=False)
list(gen.generate_ids(gen.encode("Once upon a time, in a land far away, there lived"), int(sys.argv[2])))
print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def measure(folder: str, api: str | None, tokens: int) -> int:
    env = dict(os.environ)
    if api:
        env[API_ENV] = api
    proc = subprocess.run([sys.executable, "-c", CHILD, folder, str(tokens)], env=env, capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        sys.exit(f"{folder}: {proc.stderr[-2000:]}")
    return int(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rows = []
    for folder in a.bundles:
        b = Bundle(folder)
        for api in ([None] if b.format == "onnx" else ["compiled", "interpreter"]):
            fp = predict(b, api or "onnx")
            rows.append({"bundle": folder, "engine": fp.engine, "predicted": fp.peak,
                         "measured": measure(folder, api, a.tokens), "parts": fp.parts})
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print("| bundle | engine | predicted MiB | measured MiB | predicted / measured | parts (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        parts = ", ".join(f"{k} {v / MiB:,.0f}" for k, v in r["parts"].items())
        print(f"| {r['bundle']} | {r['engine']} | {r['predicted'] / MiB:,.0f} | {r['measured'] / MiB:,.0f} | "
              f"{r['predicted'] / r['measured']:.2f} | {parts} |")


if __name__ == "__main__":
    main()
