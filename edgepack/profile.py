"""`edgepack profile`: will a model fit a device, and what does it really take?

- predicted: edgepack/footprint.py's breakdown, from a bundle's manifest, or, before converting
  anything, from a checkpoint's tensor shapes (safetensors headers / GGUF index) or a preset's
  layout plus a recipe: the weights are planned exactly as the exporter would plan them;
- measured (bundles): a child process loads the bundle and generates prompt + N tokens while this
  process samples its RSS, PSS and the resident bytes of each bundle file (/proc/PID/smaps) every
  50 ms; page faults come from the child's rusage;
- a verdict against a device profile (edgepack/devices.json);
- an HTML report with charts (edgepack/report.py) or JSON.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError
from edgepack.footprint import Footprint, devices, device_budget, estimate, peak_rss, predict

GEMMA_TOKENIZER_BYTES = 14_407_266  # tokenizer.json of Gemma's 262k vocabulary, for presets


def device_engine(fmt: str, device: str | None) -> str:
    """The engine a device would run: LiteRT's Interpreter on cores without LSE atomics."""
    if fmt == "onnx":
        return "onnx"
    if device and not devices()[device].get("lse_atomics", True):
        return "interpreter"
    return "compiled"


def plan_from_layout(family, config: dict, recipe_spec: str, fmt: str, context: int, prefill_len: int,
                     engine: str, storage=lambda name: "BF16",
                     tokenizer_bytes: int = GEMMA_TOKENIZER_BYTES, audio: dict | None = None) -> tuple[Footprint, dict]:
    """The footprint of the bundle `edgepack export` would write from a checkpoint of `family`
    (converters/models/family.py) with this text config: the exporter's own plan
    (converters/planner.py). Returns it with the planned bytes per component (what `inspect`
    would show)."""
    from edgepack.converters import quant_plan

    p, fp = _planned(family, config, recipe_spec, fmt, context, prefill_len, engine, storage, tokenizer_bytes, audio)
    return fp, quant_plan.summary(list(p.tensors.values()))


def _planned(family, config, recipe_spec, fmt, context, prefill_len, engine, storage=lambda name: "BF16",
             tokenizer_bytes: int = GEMMA_TOKENIZER_BYTES, audio: dict | None = None):
    from edgepack.converters import recipes
    from edgepack.converters.planner import plan_export

    p = plan_export(family, config, recipes.load(recipe_spec), fmt, context, prefill_len, storage, audio)
    fp = estimate(engine, p.graph_bytes(), quantized=p.quantized,
                  row_stores={name: p.store_layout(name) for name in p.tables}, kv_bytes=p.graph.cache_bytes,
                  config=dataclasses.asdict(p.config), prefill_lengths=p.graph.prefill_lengths,
                  vocab_size=p.graph.vocab_size, context=context, tokenizer_bytes=tokenizer_bytes)
    return p, fp


def _needs_convert(what: str):
    """The planner builds the family's graph on the meta device: torch and transformers."""
    try:
        from edgepack.converters import families, synth
    except ImportError as e:
        raise EdgepackError(f"{what} plans the export, which needs {e.name or 'torch'}, not installed here "
                            "(as on a device): pip install 'edgepack[convert]', or profile a bundle, which "
                            "needs neither") from None
    return families, synth


@dataclasses.dataclass
class Layout:
    """What planning needs of a model, from a preset's layout or a checkpoint's headers."""
    family: object  # converters/models/family.py's Family
    config: dict  # the text decoder's HF config
    shapes: dict  # text decoder tensors, "model...." names
    storage: object = lambda name: "BF16"
    tokenizer_bytes: int = GEMMA_TOKENIZER_BYTES
    audio: dict | None = None  # a checkpoint's audio tower (Source.audio), planned as export plans it


def layout_of(target: str | None, preset: str | None) -> Layout:
    families, synth = _needs_convert("--preset" if preset else "profiling a checkpoint")
    if preset:
        config, shapes = synth.layout(preset, towers=False)
        text = {"model." + k.split(".", 2)[2] if k.startswith("model.language_model.") else k: v
                for k, v in shapes.items()}
        return Layout(families.get(synth.PRESETS[preset][0]), config.get("text_config", config), text)
    from edgepack.converters.builtin import resolve
    from edgepack.converters.sources import open_source

    src = open_source(resolve(target))
    return Layout(src.family, src.config, src.shapes, src.storage, len(src.tokenizer_json.encode()), src.audio)


def plan_from_preset(name: str, recipe: str, fmt: str, context: int, prefill_len: int, engine: str,
                     matformer: str | None = None):
    m = layout_of(None, name)
    return plan_from_layout(m.family, sliced(m.family, m.config, matformer), recipe, fmt, context, prefill_len,
                            engine, m.storage, m.tokenizer_bytes)


def plan_from_checkpoint(path: str, recipe: str, fmt: str, context: int, prefill_len: int, engine: str,
                         matformer: str | None = None):
    m = layout_of(path, None)
    return plan_from_layout(m.family, sliced(m.family, m.config, matformer), recipe, fmt, context, prefill_len,
                            engine, m.storage, m.tokenizer_bytes, m.audio)


def sliced(family, config: dict, spec: str | None) -> dict:
    """The text config of a MatFormer slice (`--matformer`), or the config itself."""
    if spec is None:
        return config
    from edgepack.converters import matformer

    if family.name != "gemma3n":
        raise EdgepackError(f"--matformer slices Gemma 3n (E4B) models, not {family.name}")
    return matformer.sliced_config(config, matformer.load_slice(spec))


# --- measured ---------------------------------------------------------------------------------

CHILD = """
import sys
from edgepack.runtime import Generator
gen = Generator(sys.argv[1], memory_check=False)  # verified, as `edgepack run` does
print("loaded", flush=True)
ids = [gen.bos_id] + list(range(1000, 1000 + int(sys.argv[2]) - 1))
for _ in gen.generate_ids(ids, int(sys.argv[3])):
    pass
print("done", flush=True)
"""


def measure(bundle: Path, prompt_tokens: int, new_tokens: int, engine: str | None = None,
            interval: float = 0.05) -> dict:
    """Runs prompt + N tokens in a child process (with `engine`'s LiteRT API, if given) and samples
    its memory until it exits."""
    from edgepack.runtime import litert_cache
    from edgepack.system import LITERT_API_ENV

    files = {str((bundle / f).resolve()): f for f in os.listdir(bundle) if (bundle / f).is_file()}
    env = dict(os.environ) | ({LITERT_API_ENV: engine} if engine in ("compiled", "interpreter") else {})
    b = Bundle(bundle)
    litert_cache.warm_up(b, env)  # the loads a user repeats, not the one-off packing (litert_cache.py)
    cached = litert_cache.used_by(b, env)
    if cached:
        files |= {str(p.resolve()): f"(cache) {p.name}" for p in (cached.model, cached.packed_weights)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(bundle), str(prompt_tokens), str(new_tokens)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    os.set_blocking(proc.stdout.fileno(), False)
    t0, samples, events, out = time.time(), [], {}, ""

    def read_events() -> None:
        nonlocal out
        out += (proc.stdout.read() or b"").decode()  # non-blocking: None while the child is quiet
        for word in ("loaded", "done"):
            if word in out and word not in events:
                events[word] = round(time.time() - t0, 3)

    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # wait4 also gives the page faults
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        sample = sample_memory(proc.pid, files)
        if sample:
            samples.append({"t": round(time.time() - t0, 3), **sample})
        read_events()
        time.sleep(interval)
    read_events()  # what the child wrote just before it exited, after the last sample
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise EdgepackError(f"the measured run failed (exit {proc.returncode}): {err.strip()[-500:]}")
    if not samples:
        raise EdgepackError("the measured run ended before it could be sampled")
    # The kernel's high-water mark catches peaks between samples; the samples show when and where.
    return {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "interval": interval,
            "peak_rss": max(s["hwm"] for s in samples), "peak_pss": max(s["pss"] for s in samples),
            "files_max_resident": {f: max(s["files"].get(f, 0) for s in samples) for f in files.values()},
            "file_sizes": {f: Path(p).stat().st_size for p, f in files.items()},
            "page_faults": {"major": usage.ru_majflt, "minor": usage.ru_minflt},
            "events": events, "samples": samples}


def sample_memory(pid: int, files: dict[str, str]) -> dict | None:
    """RSS, PSS and resident bytes per file (`files`: resolved path -> name), from /proc/PID/smaps."""
    try:
        smaps = Path(f"/proc/{pid}/smaps").read_text()
        hwm = peak_rss(pid)
    except (OSError, ProcessLookupError):
        return None
    rss = pss = 0
    per_file: dict[str, int] = {}
    current = None
    for line in smaps.splitlines():
        head = line.split(None, 1)[0]
        if not head.endswith(":"):  # a mapping's header: address perms offset dev inode path
            fields = line.split(None, 5)
            current = files.get(fields[5].strip()) if len(fields) == 6 else None
        elif head == "Rss:":
            kb = int(line.split()[1]) * 1024
            rss += kb
            if current:
                per_file[current] = per_file.get(current, 0) + kb
        elif head == "Pss:":
            pss += int(line.split()[1]) * 1024
    return {"rss": rss, "pss": pss, "hwm": hwm, "files": per_file}


# --- the whole profile ------------------------------------------------------------------------

def profile(target: str | None, preset: str | None = None, recipe: str = "none", fmt: str = "litertlm",
            context: int = 4096, prefill_len: int = 128, device: str | None = None, run: bool = True,
            prompt_tokens: int = 512, new_tokens: int = 256, matformer: str | None = None) -> dict:
    budget = device_budget(device) if device else None
    report: dict = {"device": device, "budget": budget}
    if preset or not (Path(target).expanduser() / "manifest.json").exists():
        engine = device_engine(fmt, device)
        if preset:
            fp, comps = plan_from_preset(preset, recipe, fmt, context, prefill_len, engine, matformer)
        else:
            fp, comps = plan_from_checkpoint(target, recipe, fmt, context, prefill_len, engine, matformer)
        subject = preset or target
        report |= {"subject": f"{subject} (MatFormer {matformer})" if matformer else subject, "kind": "plan",
                   "format": fmt, "recipe": recipe, "context": context, "components": comps}
    else:
        if matformer:
            raise EdgepackError("--matformer applies to a checkpoint or a preset; a bundle is already exported")
        b = Bundle(target)
        fp = predict(b, device_engine(b.format, device) if device else None)
        report |= {"subject": str(b.path), "kind": "bundle", "format": b.format, "context": b.max_context,
                   "recipe": b.plan.precision.quantization, "components": b.plan.precision.components}
        if run:
            n_prompt = min(prompt_tokens, b.max_context - 1)
            report["measured"] = measure(b.path, n_prompt, max(1, min(new_tokens, b.max_context - n_prompt)),
                                         fp.engine)
    report["predicted"] = fp.as_dict()
    peak = report.get("measured", {}).get("peak_rss", fp.peak)
    if budget:
        report["verdict"] = {"fits": max(peak, fp.peak) <= budget, "headroom": budget - max(peak, fp.peak)}
    return report


def format_text(r: dict) -> str:
    MiB = 2**20
    p = r["predicted"]
    lines = [f"{r['subject']}: {r['format']}, quantization {r['recipe']}, context {r['context']:,} tokens, "
             f"{p['engine']} engine", "predicted peak:"]
    lines += [f"  {k:<12} {v / MiB:>10,.1f} MiB" for k, v in p["parts"].items()]
    lines.append(f"  {'peak':<12} {p['peak'] / MiB:>10,.1f} MiB (tokenizer parse alone: {p['parse_peak'] / MiB:,.0f} MiB)")
    if p.get("audio"):
        lines.append(f"  {'with audio':<12} {p['peak_with_audio'] / MiB:>10,.1f} MiB (the audio encoder's weights, "
                     f"+{p['audio'] / MiB:,.1f} MiB, loaded when a prompt first has audio; a clip's activations "
                     f"not counted)")
    m = r.get("measured")
    if m:
        lines.append(f"measured ({m['prompt_tokens']} prompt + {m['new_tokens']} generated tokens): peak RSS "
                     f"{m['peak_rss'] / MiB:,.1f} MiB, peak PSS {m['peak_pss'] / MiB:,.1f} MiB "
                     f"(predicted / measured {p['peak'] / m['peak_rss']:.2f})")
        lines.append("  most resident, per bundle file:")
        for f, size in m["file_sizes"].items():
            res = m["files_max_resident"][f]
            if res or size > MiB:
                lines.append(f"  {f:<28} {res / MiB:>9,.1f} of {size / MiB:,.1f} MiB ({res / size:.1%})")
    if r.get("verdict"):
        v = r["verdict"]
        lines.append(f"{r['device']}: budget {r['budget'] / MiB:,.0f} MiB -> "
                     + (f"fits, {v['headroom'] / MiB:,.0f} MiB to spare" if v["fits"]
                        else f"does NOT fit, {-v['headroom'] / MiB:,.0f} MiB over"))
    return "\n".join(lines)
