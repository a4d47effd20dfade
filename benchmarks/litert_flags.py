"""Where edgepack's LiteRT prefill time goes, next to LiteRT-LM on the very same `.litertlm`.

For each XNNPACK flag set (LiteRT's default, QS8 | QU8, and edgepack's, runtime/litert_cache.py)
and each thread count: the time of every prefill call of a 512-token prompt, decode tok/s, in a
fresh process per run; LiteRT-LM's own benchmark beside them. Runs alternate between the
configurations, and each configuration's first load (which packs XNNPACK's weights) is not
measured. Medians with the min-max over --runs.

    .venv/bin/python benchmarks/litert_flags.py BUNDLE --runs 5 --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from edgepack import peers  # noqa: E402

GPL3 = "/usr/share/common-licenses/GPL-3"
LITERT_DEFAULT = 0x1 | 0x2  # what LiteRT's CPU accelerator uses when given no flags

# argv: bundle, threads, flags, prompt tokens, decode tokens, text
_OURS = """
import json, sys, time
import numpy as np
from edgepack.runtime import litert_cache
litert_cache.XNNPACK_FLAGS = int(sys.argv[3])
from edgepack.runtime import Generator
gen = Generator(sys.argv[1], threads=int(sys.argv[2]), verify=False)
e, n, decode = gen.engine, int(sys.argv[4]), int(sys.argv[5])
ids = np.asarray(gen.encode(open(sys.argv[6]).read())[:n], np.int32)
calls, run = [], e._run_prefill
def timed(i, p):
    t = time.perf_counter(); run(i, p); calls.append(time.perf_counter() - t)
e._run_prefill = timed
t0 = time.perf_counter()
e.prefill(ids[:-1])
prefill = time.perf_counter() - t0
logits = e.decode(int(ids[-1]), n - 1)
t0 = time.perf_counter()
for k in range(decode):
    logits = e.decode(int(np.argmax(logits)), n + k)
print(json.dumps({"prefill_tok_s": (n - 1) / prefill, "decode_tok_s": decode / (time.perf_counter() - t0),
                  "calls_ms": [c * 1000 for c in calls]}))
"""


def _run(code: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    a = ap.parse_args()
    from edgepack.bundle import Bundle
    from edgepack.runtime import litert_cache

    b = Bundle(a.bundle)
    model = b.file(b.graph.file)
    configs = [(f"edgepack, flags {f:#x}", t, f) for t in a.threads for f in (LITERT_DEFAULT, litert_cache.XNNPACK_FLAGS)]
    configs += [("litert-lm", t, None) for t in a.threads]
    results: dict[tuple, list[dict]] = {(name, t): [] for name, t, _ in configs}
    with tempfile.TemporaryDirectory() as lm_cache:
        def once(name, t, flags) -> dict:
            if flags is None:
                r = _run(peers.LITERT_LM, model, a.prompt, a.decode, t, lm_cache, b.max_context, GPL3)
                return {k: r[k] for k in ("prefill_tok_s", "decode_tok_s")}
            return _run(_OURS, a.bundle, t, flags, a.prompt, a.decode, GPL3)

        for c in configs:  # packs XNNPACK's weights for each flag set: not measured
            once(*c)
        for i in range(a.runs):
            for c in configs:
                results[c[:2]].append(once(*c))
                print(f"run {i + 1}/{a.runs} {c[0]}, {c[1]} threads: {json.dumps(results[c[:2]][-1])}", file=sys.stderr)
    load = os.getloadavg()
    print(f"{b.path} ({b.plan.precision.quantization}), prompt {a.prompt} tokens, decode {a.decode}, "
          f"{a.runs} runs each, alternating; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| engine | threads | prefill tok/s | decode tok/s | prefill calls, ms (median run) |")
    print("|---|---|---|---|---|")
    for (name, t), rs in results.items():
        def cell(key):
            v = [r[key] for r in rs]
            return f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"
        calls = ""
        if "calls_ms" in rs[0]:
            mid = sorted(rs, key=lambda r: r["prefill_tok_s"])[len(rs) // 2]
            calls = " ".join(f"{c:.0f}" for c in mid["calls_ms"])
        print(f"| {name} | {t} | {cell('prefill_tok_s')} | {cell('decode_tok_s')} | {calls} |")


if __name__ == "__main__":
    main()
