"""`edgepack bench`: load time, time to first token, prefill and decode tok/s, peak RSS; with
`--compare`, LiteRT-LM on the very same `.litertlm`, each engine in its own process so peak RSS
is its own. Prompt: the first tokens of /usr/share/common-licenses/GPL-3 (or --text)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgepack.errors import EdgepackError

DEFAULT_TEXT = Path("/usr/share/common-licenses/GPL-3")

# Runs in a child process: edgepack's runtime on the bundle, printed as JSON.
_OURS = """
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from edgepack.runtime import Generator
gen = Generator(sys.argv[1], threads=int(sys.argv[4]) or None, verify=False)
load = time.perf_counter() - t0
text = open(sys.argv[5], errors="replace").read()
ids = np.asarray(gen.encode(text)[: int(sys.argv[2])], np.int32)
gen.engine.reset()
t0 = time.perf_counter()
gen.engine.prefill(ids[:-1])
logits = gen.engine.decode(int(ids[-1]), len(ids) - 1)
ttft = time.perf_counter() - t0
t0 = time.perf_counter()
pos = len(ids)
for _ in range(int(sys.argv[3])):
    logits = gen.engine.decode(int(np.argmax(logits)), pos)
    pos += 1
decode = time.perf_counter() - t0
print(json.dumps({"load_s": load, "ttft_s": ttft, "prefill_tok_s": len(ids) / ttft,
                  "decode_tok_s": int(sys.argv[3]) / decode}))
"""

# LiteRT-LM's own benchmark on the same file.
_LITERT_LM = """
import json, sys, tempfile
import litert_lm
litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
b = litert_lm.Benchmark(model_path=sys.argv[1], backend=litert_lm.Backend.CPU(thread_count=int(sys.argv[4])),
                        prefill_tokens=int(sys.argv[2]), decode_tokens=int(sys.argv[3]),
                        cache_dir=tempfile.mkdtemp())
i = b.run()
print(json.dumps({"load_s": i.init_time_in_second, "ttft_s": i.time_to_first_token_in_second,
                  "prefill_tok_s": i.last_prefill_tokens_per_second, "decode_tok_s": i.last_decode_tokens_per_second}))
"""


def _child(code: str, *args) -> dict:
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, stderr=err)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
            raise EdgepackError(f"benchmark process failed: {tail[0] if tail else status}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


def bench(bundle: str | Path, prefill: int = 512, decode: int = 128, threads: int | None = None,
          compare: bool = False, text: Path = DEFAULT_TEXT, log=print) -> dict:
    from edgepack.bundle import Bundle
    from edgepack.runtime.engines import default_threads

    b = Bundle(bundle)
    b.verify(checksums=False)
    if prefill + decode > b.max_context:
        raise EdgepackError(f"--prefill {prefill} + --decode {decode} exceeds the bundle's context ({b.max_context})")
    if prefill < 2 or decode < 1:
        raise EdgepackError("--prefill must be >= 2 and --decode >= 1")
    if not Path(text).is_file():
        raise EdgepackError(f"text file not found: {text}")
    threads = threads or default_threads()
    report = {"bundle": str(b.path), "format": b.format, "threads": threads, "prefill_tokens": prefill,
              "decode_tokens": decode, "engines": {}}
    log(f"edgepack ({b.format}) ...")
    report["engines"]["edgepack"] = _child(_OURS, b.path, prefill, decode, threads, text)
    if compare:
        if b.format != "litertlm":
            log("LiteRT-LM: skipped (it runs .litertlm bundles only)")
        else:
            try:
                import litert_lm  # noqa: F401
            except ImportError:
                log("LiteRT-LM: skipped (pip install litert-lm-api)")
            else:
                log("LiteRT-LM on the same .litertlm ...")
                report["engines"]["litert-lm"] = _child(_LITERT_LM, b.file(b.manifest["graph"]["file"]),
                                                        prefill, decode, threads)
    return report


def format_report(r: dict) -> str:
    keys = [("load_s", "load s", "{:.2f}"), ("ttft_s", "TTFT s", "{:.3f}"),
            ("prefill_tok_s", "prefill tok/s", "{:.1f}"), ("decode_tok_s", "decode tok/s", "{:.1f}"),
            ("peak_rss_mib", "peak RSS MiB", "{:,.0f}")]
    lines = [f"{r['bundle']} ({r['format']}), {r['threads']} threads, prefill {r['prefill_tokens']} tokens, "
             f"decode {r['decode_tokens']} tokens",
             f"{'engine':<12}" + "".join(f"{label:>15}" for _, label, _ in keys)]
    for name, e in r["engines"].items():
        lines.append(f"{name:<12}" + "".join(f"{fmt.format(e[k]):>15}" for k, _, fmt in keys))
    if "litert-lm" in r["engines"]:
        ours, peer = r["engines"]["edgepack"], r["engines"]["litert-lm"]
        lines.append(f"edgepack / LiteRT-LM: prefill {ours['prefill_tok_s'] / peer['prefill_tok_s']:.2f}x, "
                     f"decode {ours['decode_tok_s'] / peer['decode_tok_s']:.2f}x, "
                     f"peak RSS {ours['peak_rss_mib'] / peer['peak_rss_mib']:.2f}x")
    return "\n".join(lines)
