"""Predicted vs measured peak memory of bundles, per engine.

    .venv/bin/python benchmarks/memory_parts.py BUNDLE [BUNDLE ...] [--prompt 16] [--tokens 16]

For each bundle (and, for .litertlm, both LiteRT APIs) `edgepack profile`'s measured run: a fresh
process loads and verifies it, generates greedily and reports its high-water RSS; beside it, edgepack/footprint.py's prediction from the
manifest and its parts. The prediction assumes the whole context may fill; the KV cache is
allocated at full length anyway, so a short generation measures the same tensors.
"""

from __future__ import annotations

import argparse
import json

from edgepack.bundle import Bundle
from edgepack.footprint import MiB, predict
from edgepack.profile import measure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+")
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rows = []
    for folder in a.bundles:
        b = Bundle(folder)
        for api in ([None] if b.format == "onnx" else ["compiled", "interpreter"]):
            fp = predict(b, api or "onnx")
            measured = measure(b.path, a.prompt, a.tokens, fp.engine)["peak_rss"]
            rows.append({"bundle": folder, "engine": fp.engine, "predicted": fp.peak, "measured": measured,
                         "parts": fp.parts})
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
