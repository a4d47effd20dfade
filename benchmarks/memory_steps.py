"""Where a bundle's resident memory comes from, step by step, in one process.

    .venv/bin/python benchmarks/memory_steps.py BUNDLE [--threads 2] [--prompt 512]

Loads what `Generator` loads, in its order, then calls each signature for the first time on its
own (one decode step before the prompt, so the decode graph's first-call allocations show apart
from the prefill graph's), and prints RSS, anonymous and file-backed resident memory
(/proc/self/status) after each step. File-backed pages are the libraries and the mapped model
files (for a .litertlm: LiteRT's cached section and XNNPACK's packed weights); anonymous memory
is the heap (Python, the tokenizer, the KV cache, the engines' scratch).
"""

from __future__ import annotations

import argparse


def resident() -> dict[str, int]:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=512)
    a = p.parse_args()
    rows = [("python", resident())]
    import numpy as np

    from edgepack.bundle import Bundle
    from edgepack.runtime.engines import open_engine
    from edgepack.runtime.generate import load_tokenizer
    rows.append(("imports", resident()))
    b = Bundle(a.bundle)
    tok = load_tokenizer(b, verified=False)  # as Generator does
    rows.append(("tokenizer", resident()))
    engine = open_engine(b, a.threads)
    rows.append(("engine (weights mapped, KV cache)", resident()))
    engine.decode(2, 0)
    rows.append(("first decode step", resident()))
    engine.prefill(np.arange(1000, 1000 + a.prompt, dtype=np.int32), start=1)
    rows.append((f"prefill {a.prompt} tokens", resident()))
    for i in range(16):
        engine.decode(3, 1 + a.prompt + i)
    rows.append(("16 more decode steps", resident()))
    print(f"{a.bundle}, {a.threads} threads; MiB")
    print(f"  {'after':<36} {'RSS':>8} {'anon':>8} {'file':>8} {'peak':>8}")
    for name, r in rows:
        print(f"  {name:<36} " + " ".join(f"{r[k] / 2**20:>8,.0f}" for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")))
    del tok


if __name__ == "__main__":
    main()
