"""`edgepack bench`: load time, time to first token, prefill and decode tok/s, peak RSS, and the
decode roofline (bytes read per token / measured read bandwidth). With `--compare`, the peers
(edgepack/peers.py) on the same weights, each engine in its own process so peak RSS is its own.

Every engine is measured alike:
- the same prompt: the first --prefill tokens of /usr/share/common-licenses/GPL-3 (or --text) by
  the model's tokenizer, the same --decode greedy tokens after it, and a KV cache of the bundle's
  context for everyone;
- prefill tok/s is prompt tokens over the prefill's time alone; time to first token runs from the
  token ids (tokenization left out; LiteRT-LM's own figure starts before it tokenizes) to the first
  generated token; load time runs from before the engine's library is imported to a ready model;
- each engine reports the tokens it prefilled and decoded, and a count that differs from what was
  asked fails the comparison;
- --runs runs of every engine, alternating between them; each figure is the median of its runs,
  with the min-max beside it, and the machine's load average before and after."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from edgepack import peers
from edgepack.errors import EdgepackError

DEFAULT_TEXT = Path("/usr/share/common-licenses/GPL-3")
FIGURES = ("load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mib")

# Runs in a child process: edgepack's runtime on the bundle, printed as JSON. argv: bundle,
# prefill, decode, threads, text. The engine prefills all but the last prompt token; the first
# decode step takes that one and gives the first token (as LiteRT-LM's pipeline does).
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
prefill = time.perf_counter() - t0
token = int(np.argmax(gen.engine.decode(int(ids[-1]), len(ids) - 1)))
ttft = time.perf_counter() - t0
t0 = time.perf_counter()
pos, decoded = len(ids), 0
for _ in range(int(sys.argv[3])):
    token = int(np.argmax(gen.engine.decode(token, pos)))
    pos, decoded = pos + 1, decoded + 1
decode = time.perf_counter() - t0
print(json.dumps({"load_s": load, "ttft_s": ttft, "prefill_tok_s": len(ids) / prefill,
                  "decode_tok_s": decoded / decode, "prefilled": len(ids), "decoded": decoded}))
"""

def _child(code: str, *args, env: dict | None = None) -> dict:
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, stderr=err,
                                env=env)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
            raise EdgepackError(f"benchmark process failed: {tail[0] if tail else status}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


def _runner(code: str, *args, env: dict | None = None, weights: str | None = None) -> Callable[[], dict]:
    """One run of an engine's child script, its arguments bound now: a lambda would read `env` when
    it runs, after the next peer had reassigned it (onnxruntime-genai ran with llama.cpp's path)."""
    return lambda: _child(code, *args, env=env) | ({"weights": weights} if weights else {})


def _env_with(path: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(path)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def decode_bytes(b) -> int:
    """Bytes one decode step reads: every weight of the decode graph (the tied embedding included,
    as the LM head) and the whole KV cache (rings included), which the graphs attend over at every
    step."""
    return b.graph_bytes + b.cache_bytes


def _source_gguf(b, gguf: str | None) -> Path | None:
    if gguf:
        return Path(gguf)
    source = b.plan.model.source
    if source.endswith(".gguf"):
        from edgepack.converters.builtin import gemma_gguf

        try:
            builtin = gemma_gguf()
        except EdgepackError:
            return None
        return builtin if builtin.name == source else None
    return None


def bench(bundle: str | Path, prefill: int = 512, decode: int = 128, threads: int | None = None,
          compare: bool = False, text: Path = DEFAULT_TEXT, gguf: str | None = None, runs: int = 5,
          log=print) -> dict:
    from edgepack.bundle import Bundle
    from edgepack.system import default_threads

    b = Bundle(bundle)
    b.verify(checksums=False)
    if prefill + decode > b.max_context:
        raise EdgepackError(f"--prefill {prefill} + --decode {decode} exceeds the bundle's context ({b.max_context})")
    if prefill < 2 or decode < 1 or runs < 1:
        raise EdgepackError("--prefill must be >= 2, --decode and --runs >= 1")
    if not Path(text).is_file():
        raise EdgepackError(f"text file not found: {text}")
    if gguf and not Path(gguf).is_file():
        raise EdgepackError(f"GGUF not found: {gguf}")
    threads = threads or default_threads()
    report = {"bundle": str(b.path), "format": b.format, "threads": threads, "prefill_tokens": prefill,
              "decode_tokens": decode, "context": b.max_context, "runs": runs, "engines": {}, "skipped": {}}
    from edgepack.runtime import litert_cache

    # Both LiteRT engines keep XNNPACK's packed weights in a cache; the runs measured are the
    # loads after the first (which packs them and peaks higher), as a deployed app's are.
    if litert_cache.warm_up(b):
        log("first load: XNNPACK packed the weights into edgepack's cache (runtime/litert_cache.py)")
    with tempfile.TemporaryDirectory() as scratch:
        engines = {"edgepack": lambda: _child(_OURS, b.path, prefill, decode, threads, text)}
        if compare:
            engines |= _peers(b, report, prefill, decode, threads, Path(text), gguf, Path(scratch), log)
        report["load_average"] = {"before": list(os.getloadavg())}
        measured: dict[str, list[dict]] = {name: [] for name in engines}
        for i in range(runs):
            for name, run in engines.items():
                log(f"run {i + 1}/{runs}: {name} ...")
                measured[name].append(_counted(name, run(), prefill, decode))
        report["load_average"]["after"] = list(os.getloadavg())
    for name, results in measured.items():
        report["engines"][name] = _summary(results) | {k: v for k, v in results[0].items() if k not in FIGURES}
    log("read bandwidth ...")
    bandwidth = peers.read_bandwidth(threads)
    report["roofline"] = {"decode_bytes": decode_bytes(b), "read_bandwidth_gb_s": bandwidth / 1e9,
                          "decode_tok_s_limit": bandwidth / decode_bytes(b)}
    return report


def _counted(name: str, result: dict, prefill: int, decode: int) -> dict:
    """The run's result, once its own counts of prompt and generated tokens match what was asked."""
    if (result["prefilled"], result["decoded"]) != (prefill, decode):
        raise EdgepackError(f"{name} prefilled {result['prefilled']} and decoded {result['decoded']} tokens, "
                            f"not the {prefill} and {decode} asked: its figures would not compare")
    return result


def _summary(results: list[dict]) -> dict:
    """Medians of the runs' figures, their min-max under "spread"."""
    out = {key: statistics.median(r[key] for r in results) for key in FIGURES}
    out["spread"] = {key: [min(r[key] for r in results), max(r[key] for r in results)] for key in FIGURES}
    return out


def peer_bits(precision) -> str | None:
    """Which of onnxruntime-genai's builds (`-p int8` / `-p int4`) a bundle is compared with: the
    named recipe's, or for a recipe file the bit width of its attention weights, the decoder's
    matmuls (benchmarks/int4-at-ort-genai-size.json, 4-bit everywhere, goes with `-p int4`)."""
    if precision.quantization in ("int8", "int4", "int4-head4"):
        return precision.quantization.removesuffix("-head4")
    stored = precision.components.get("attention", {}).get("precisions", [])
    widths = {p.split()[0] for p in stored}
    return widths.pop() if widths in ({"int8"}, {"int4"}) else None


def _peers(b, report: dict, prefill: int, decode: int, threads: int, text: Path, gguf: str | None,
           scratch: Path, log) -> dict[str, Callable[[], dict]]:
    """The peers that can run here, each as a function that runs it once; the others are skipped with
    a reason in the report."""
    def skip(name: str, why: str) -> None:
        log(f"{name}: skipped ({why})")
        report["skipped"][name] = why

    found: dict[str, Callable[[], dict]] = {}
    context = b.max_context
    if b.format != "litertlm":
        skip("litert-lm", "it runs .litertlm bundles only")
    elif importlib.util.find_spec("litert_lm") is None:  # not imported here: it starts a LiteRT runtime
        skip("litert-lm", "not installed: pip install litert-lm-api")
    else:
        model = b.file(b.graph.file)
        folder = peers.litert_lm_cache(b) or scratch  # its packed weights, from a first load not measured
        if not any(folder.iterdir()):
            log("LiteRT-LM's first load: it packs the weights into its cache ...")
            _child(peers.LITERT_LM, model, 2, 1, threads, folder, context, text)
        found["litert-lm"] = _runner(peers.LITERT_LM, model, prefill, decode, threads, folder, context, text)

    bits = peer_bits(b.plan.precision)
    genai_model = peers.ort_genai_models_dir() / f"gemma-3-270m-{bits}"
    if _source_gguf(b, None) is None or bits is None:
        skip("onnxruntime-genai", "peer models exist for the built-in gemma-3-270m at int8/int4 only")
    elif not (peers.ort_genai_dir() / "onnxruntime_genai").is_dir() or not (genai_model / "genai_config.json").exists():
        skip("onnxruntime-genai", "not built: benchmarks/build_peers.sh installs it and builds its models")
    else:
        found["onnxruntime-genai"] = _runner(peers.ORT_GENAI, genai_model, prefill, decode, threads, text, context,
                                             env=_env_with(peers.ort_genai_dir()), weights=f"its builder, -p {bits}")

    source = _source_gguf(b, gguf)
    if source is None:
        skip("llama.cpp", "no GGUF for these weights: pass --gguf")
    elif not (peers.llama_cpp_dir() / "llama_cpp").is_dir():
        skip("llama.cpp", f"not built: benchmarks/build_peers.sh builds it into {peers.llama_cpp_dir()}")
    else:
        found["llama.cpp"] = _runner(peers.LLAMA_CPP, source, prefill, decode, threads, text, context,
                                     env=_env_with(peers.llama_cpp_dir()), weights=source.name)
    return found


def format_report(r: dict) -> str:
    keys = [("load_s", "load s", "{:.2f}"), ("ttft_s", "TTFT s", "{:.3f}"),
            ("prefill_tok_s", "prefill tok/s", "{:.1f}"), ("decode_tok_s", "decode tok/s", "{:.1f}"),
            ("peak_rss_mib", "peak RSS MiB", "{:,.0f}")]
    load = r["load_average"]
    lines = [f"{r['bundle']} ({r['format']}), {r['threads']} threads, prefill {r['prefill_tokens']} tokens, "
             f"decode {r['decode_tokens']} tokens, context {r['context']}; median of {r['runs']} runs each, "
             f"alternating (min-max below); load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after",
             f"{'engine':<18}" + "".join(f"{label:>15}" for _, label, _ in keys)]
    for name, e in r["engines"].items():
        lines.append(f"{name:<18}" + "".join(f"{fmt.format(e[k]):>15}" for k, _, fmt in keys))
        lines.append(f"{'':<18}" + "".join(f"{fmt.format(e['spread'][k][0]) + '-' + fmt.format(e['spread'][k][1]):>15}"
                                           for k, _, fmt in keys))
    ours = r["engines"]["edgepack"]
    for name, peer in r["engines"].items():
        if name != "edgepack":
            lines.append(f"edgepack / {name}: prefill {ours['prefill_tok_s'] / peer['prefill_tok_s']:.2f}x, "
                         f"time to first token {ours['ttft_s'] / peer['ttft_s']:.2f}x, "
                         f"decode {ours['decode_tok_s'] / peer['decode_tok_s']:.2f}x, "
                         f"peak RSS {ours['peak_rss_mib'] / peer['peak_rss_mib']:.2f}x")
    for name, why in r.get("skipped", {}).items():
        lines.append(f"{name}: skipped ({why})")
    if "roofline" in r:
        rf = r["roofline"]
        lines.append(f"roofline: {rf['decode_bytes'] / 2**20:,.0f} MiB read per decoded token at "
                     f"{rf['read_bandwidth_gb_s']:.1f} GB/s -> at most {rf['decode_tok_s_limit']:.1f} tok/s; "
                     f"edgepack decode at {ours['decode_tok_s'] / rf['decode_tok_s_limit']:.0%} of it")
    return "\n".join(lines)
