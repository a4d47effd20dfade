"""Time to first token of a conversation's next turn, with the cached K/V of the turns before it
reused (Engine.reusable) and without (the whole prompt prefilled again), in one process.

    .venv/bin/python benchmarks/next_turn.py BUNDLE [--history 400] [--reply 32] [--turn 24] [--repeats 5]

The history is `--history` tokens of /usr/share/common-licenses/GPL-3, the reply `--reply` greedy
tokens, the next turn `--turn` more tokens of the text; the second run's prompt is history +
reply + turn, as a chat server sends it. Reuse on and off alternate; medians and min-max of the
time to first token are printed, with their ratio.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

TEXT = Path("/usr/share/common-licenses/GPL-3")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--history", type=int, default=400)
    p.add_argument("--reply", type=int, default=32)
    p.add_argument("--turn", type=int, default=24)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()

    from edgepack.runtime import Generator

    gen = Generator(a.bundle, threads=a.threads)
    words = gen.tokenizer.encode(TEXT.read_text())
    history = [gen.bos_id] + words[:a.history]
    turn = words[a.history:a.history + a.turn]
    times: dict[bool, list[float]] = {True: [], False: []}
    reused = 0
    for _ in range(a.repeats):
        for reuse in (True, False):
            gen.reuse_cache = False
            reply = list(gen.generate_ids(history, a.reply))  # the first turn, from an empty cache
            gen.reuse_cache = reuse
            list(gen.generate_ids(history + reply + turn, 1))
            times[reuse].append(gen.last_run.first_token_s)
            reused = max(reused, gen.last_run.reused_tokens)
    prompt = len(history) + a.reply + a.turn
    print(f"{Path(a.bundle).name}: next turn of {prompt} tokens, {reused} of them reused")
    for reuse in (True, False):
        t = times[reuse]
        print(f"  {'reuse' if reuse else 'no reuse':9} time to first token {statistics.median(t) * 1e3:8.1f} ms "
              f"(min {min(t) * 1e3:.1f}, max {max(t) * 1e3:.1f}, {a.repeats} runs)")
    print(f"  ratio (no reuse / reuse): {statistics.median(times[False]) / statistics.median(times[True]):.1f}x")


if __name__ == "__main__":
    main()
