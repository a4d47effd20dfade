"""Runs on the device (and, for comparison, on the host): greedy generation with edgepack's
runtime, printed as one JSON line. Standalone on purpose: a board has only `edgepack[runtime]`.

    python3 on_device.py BUNDLE [BUNDLE ...] --prompt TEXT [--prompt TEXT ...] --tokens N

For every bundle and prompt: the prompt's token ids, the greedy tokens, and each step's eight
largest logits (ids and values), so the host can compare numbers as well as tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np

TOP = 8


def largest(logits: np.ndarray) -> np.ndarray:
    """The TOP largest logits' ids, largest first: a partition, not a sort of 262,144 values
    (0.16 s a step under emulation)."""
    ids = np.argpartition(logits, -TOP)[-TOP:]
    return ids[np.argsort(logits[ids])[::-1]]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("bundles", nargs="+")
    p.add_argument("--prompt", action="append", required=True)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--no-memory-check", action="store_true")
    p.add_argument("--audio", action="append", default=[], help="WAV clips placed before each prompt (Gemma 3n)")
    a = p.parse_args()

    from edgepack.errors import EdgepackError
    from edgepack.footprint import peak_rss
    from edgepack.runtime import Generator
    from edgepack.system import default_threads

    runs = []
    held = None  # the last bundle's tokenizer: a next bundle that ships the same one shares its parse
    for path in a.bundles:
        try:
            gen = Generator(path, memory_check=not a.no_memory_check)
        except EdgepackError as e:
            print(f"edgepack: error: {e}", file=sys.stderr)
            return 2
        for prompt in a.prompt:
            ids = gen.encode(prompt, clips=len(a.audio))
            soft = gen.audio_soft_tokens(a.audio) if a.audio else None
            steps = []
            list(gen.generate_ids(ids, a.tokens, on_step=steps.append, soft=soft))
            top = [largest(s.logits) for s in steps]
            runs.append({"bundle": path, "engine": type(gen.engine).__name__, "prompt": prompt, "prompt_ids": ids,
                         "tokens": [s.token for s in steps],
                         "top_ids": [t.tolist() for t in top],
                         "top_logits": [s.logits[t].tolist() for s, t in zip(steps, top)]})
        held = gen.tokenizer
        del gen
    print(json.dumps({"machine": platform.machine(), "threads": default_threads(),
                      "cores": len(os.sched_getaffinity(0)),
                      "peak_rss": peak_rss(), "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
