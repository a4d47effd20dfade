"""How much memory running a bundle takes, predicted from its manifest, and how much this process
may use. The runtime compares the two before it reads anything big, so a bundle that can't fit a
board is refused with the numbers instead of being OOM-killed half-way through a generation.

The prediction is a sum of parts, each from the manifest alone:
- runtime: the interpreter with numpy and the engine's library loaded;
- tokenizer: the vocabulary as runtime/tokenizer.py holds it (Gemma's 262k pieces and 515k merges
  in numpy arrays; reading tokenizer.json briefly needs ~9x what stays);
- weights: the decode graph's bytes times what the engine keeps per byte (below);
- row stores: the memory-mapped tables' pages a generation can touch (one row per distinct token);
- KV cache: every cache tensor, times the copies the engine holds;
- activations: the largest prefill chunk's attention scores, MLP and logits.

Per-byte engine costs were measured on this project's bundles (`benchmarks/memory_parts.py`):
LiteRT's CompiledModel maps XNNPACK's packed weights from its cache; the Interpreter keeps the
graph section as a Python bytes object and XNNPACK packs the weights again; onnxruntime loads the
external data into its own buffers and prepacks MatMulNBits.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from edgepack import contract
from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError
from edgepack.plan import AUDIO_SECTIONS, RowStore
from edgepack.system import litert_api

MiB = 2**20
PAGE = 4096
RUNTIME_BYTES = 80 * MiB  # python + numpy + onnxruntime or ai-edge-litert, imported
PARSE_BASE_BYTES = 40 * MiB  # python + numpy + edgepack: the engine's library loads after parsing
# runtime/tokenizer.py on Gemma's tokenizer.json (14.4 MB): 24 MiB after reading it, with the freed
# heap handed back (malloc_trim), 211 MiB while json parses it. A file of another shape goes to the
# tokenizers library, which holds ~4x as much (7 and 24 per byte): not predicted here.
TOKENIZER_RESIDENT_PER_FILE_BYTE = 1.8
TOKENIZER_PARSE_PER_FILE_BYTE = 16.0
# Resident bytes per graph byte, (float graph, quantized graph): quantized weights are repacked.
# onnxruntime holds its repacked copies; the engine keeps the mapped originals out of the
# resident set (runtime/mapped_pages.py). Calibrated on full-size E2B and E4B int4 (1.16, 1.16:
# docs/full-size.md). The CompiledModel engine maps the weights XNNPACK packed into its cache
# (runtime/litert_cache.py; the loads after the first, which packs them). The Interpreter maps the
# cached section and keeps its pages out of the resident set, but XNNPACK packs each signature's
# weights apart (2.1: full-size E2B int4). With EDGEPACK_CACHE=off both hold the section as bytes
# besides (about one copy more).
WEIGHT_COPIES = {"onnx": (1.1, 1.16), "compiled": (1.0, 1.0), "interpreter": (2.0, 2.1)}
KV_COPIES = {"onnx": 1, "compiled": 1, "interpreter": 4}  # the Interpreter: in and out, per signature
DEVICES_FILE = Path(__file__).with_name("devices.json")


@dataclasses.dataclass
class Footprint:
    parts: dict[str, int]  # steady-state bytes per part, during generation
    parse_peak: int  # bytes while the tokenizer is parsed (before the engine loads)
    engine: str
    audio: int = 0  # what the audio encoder adds once a prompt has audio (loaded on first use)

    @property
    def peak(self) -> int:
        return max(sum(self.parts.values()), self.parse_peak)

    def lines(self) -> list[str]:
        out = [f"  {name:<12} {n / MiB:>10,.1f} MiB" for name, n in self.parts.items()]
        why = " (while parsing the tokenizer)" if self.parse_peak > sum(self.parts.values()) else ""
        out.append(f"  {'peak':<12} {self.peak / MiB:>10,.1f} MiB{why}")
        return out

    @property
    def peak_with_audio(self) -> int:
        return max(sum(self.parts.values()) + self.audio, self.parse_peak)

    def as_dict(self) -> dict:
        return {"engine": self.engine, "peak": self.peak, "parse_peak": self.parse_peak, "parts": self.parts,
                **({"audio": self.audio, "peak_with_audio": self.peak_with_audio} if self.audio else {})}


def engine_kind(b: Bundle) -> str:
    """The engine this machine runs the bundle with: onnxruntime, or LiteRT's API for this CPU."""
    return "onnx" if b.format == "onnx" else litert_api()


def predict(b: Bundle, engine: str | None = None, row_cache_mb: float = 0.0) -> Footprint:
    """Peak memory of a generation that may fill the bundle's whole context (with a hot-row cache
    of `row_cache_mb` for the per-layer embedding store, counted whole: runtime/row_store.py)."""
    p = b.plan
    fp = estimate(
        engine or engine_kind(b), b.graph_bytes, quantized=p.precision.quantization != "none",
        row_stores={n: r for n, r in p.row_stores.items() if not (p.audio and n == p.audio.vocab_store)},
        kv_bytes=b.cache_bytes, config=p.model.config,
        prefill_lengths=p.graph.prefill_lengths, vocab_size=p.graph.vocab_size, context=b.max_context,
        tokenizer_bytes=p.file_entry(p.tokenizer.file).size)
    if p.audio is not None:
        fp.audio = audio_bytes(b)
    ple = p.row_stores.get("per_layer_embeddings")
    if ple and row_cache_mb:
        row = 4 * ple.cols
        fp.parts["row_cache"] = int(row_cache_mb * MiB) // row * row
    return fp


def audio_bytes(b: Bundle) -> int:
    """What edgepack's runtime holds once a prompt has audio: the encoder's weights as onnxruntime
    holds them (ONNX), or the encoder and adapter sections read into memory and packed again by
    XNNPACK (a .litertlm's, on the Interpreter), and the audio vocabulary's rows. A clip's
    activations are not counted."""
    p = b.plan
    quantized = p.precision.quantization != "none"
    if p.runtime_format == "onnx":
        weights = int(sum(f.size for f in p.files if f.role == "audio_weights") * WEIGHT_COPIES["onnx"][quantized])
    else:
        sections = [s for s in p.graph.sections or [] if s.model_type in AUDIO_SECTIONS]
        weights = int(sum(s.size for s in sections) * WEIGHT_COPIES["interpreter"][quantized])
    vocab = p.row_stores[p.audio.vocab_store]
    return weights + vocab.rows * vocab.row_bytes


def estimate(engine: str, graph_bytes: int, quantized: bool, row_stores: dict[str, RowStore], kv_bytes: int,
             config: dict, prefill_lengths: list[int], vocab_size: int, context: int,
             tokenizer_bytes: int) -> Footprint:
    """The parts, from what a bundle's manifest says (or what an export would write)."""
    if engine not in WEIGHT_COPIES:
        raise EdgepackError(f"unknown engine {engine!r}: {', '.join(WEIGHT_COPIES)}")
    parts = {
        "runtime": RUNTIME_BYTES,
        "tokenizer": int(tokenizer_bytes * TOKENIZER_RESIDENT_PER_FILE_BYTE),
        "weights": int(graph_bytes * WEIGHT_COPIES[engine][quantized]),
        "row_stores": sum(row_store_resident(spec, context) for spec in row_stores.values()),
        "kv_cache": kv_bytes * KV_COPIES[engine],
        "activations": activation_bytes(config, prefill_lengths, vocab_size, context),
    }
    return Footprint(parts, PARSE_BASE_BYTES + int(tokenizer_bytes * TOKENIZER_PARSE_PER_FILE_BYTE), engine)


def row_store_resident(spec: RowStore, tokens: int) -> int:
    """Pages of a memory-mapped table that `tokens` distinct rows touch (each row's own pages,
    plus its scales), never more than the table."""
    row = spec.row_bytes + 4 * spec.scale_columns
    pages_per_row = math.ceil(row / PAGE) + 1  # a row rarely starts on a page boundary
    return min(spec.rows * row, tokens * pages_per_row * PAGE)


def activation_bytes(cfg: dict, prefill_lengths: list[int], vocab_size: int, context: int) -> int:
    """The largest prefill chunk's transient tensors: attention scores and probabilities against
    the whole cache, the MLP's widest intermediate, hidden states (AltUp's streams) and the
    logits, all float32."""
    chunk = prefill_lengths[0] if prefill_lengths else min(context, contract.DYNAMIC_PREFILL_CHUNK)
    ffn = cfg.get("intermediate_size", 0)
    ffn = max(ffn) if isinstance(ffn, list) else int(ffn)
    heads, hidden = int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
    streams = int(cfg.get("altup_num_inputs", 1))
    scores = 2 * heads * chunk * context
    mlp = 3 * chunk * ffn
    states = 4 * chunk * hidden * streams
    return 4 * (scores + mlp + states + 2 * vocab_size)


# --- what this process may use ---------------------------------------------------------------

def memory_budget() -> tuple[int, str]:
    """(bytes, where the figure comes from): the tightest cgroup memory limit over this process's
    cgroup and its ancestors (v1 and v2), else MemAvailable plus what the process already holds."""
    limits = [(n, f"cgroup limit of {where}") for n, where in _cgroup_limits()]
    if limits:
        return min(limits)
    meminfo = _meminfo()
    return meminfo.get("MemAvailable", meminfo.get("MemFree", 0)) + _own_rss(), "MemAvailable"


def _cgroup_limits():
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2
            roots, names = [Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")], ("memory.max",)
        elif "memory" in controllers.split(","):
            roots, names = [Path("/sys/fs/cgroup/memory")], ("memory.limit_in_bytes",)
        else:
            continue
        for root in roots:
            d = root / rel.lstrip("/")
            while True:
                for name in names:
                    n = _read_int(d / name)
                    if n is not None and n < 1 << 60:  # "max" / page-rounded 2^63 mean no limit
                        yield n, d
                if d == root:
                    break
                d = d.parent


def _read_int(p: Path) -> int | None:
    try:
        return int(p.read_text().strip())
    except (OSError, ValueError):
        return None


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def _own_rss() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss(pid: int | str = "self") -> int:
    """A process's high-water RSS (VmHWM). Not ru_maxrss: that survives exec, so a child of a big
    process would report its parent's peak."""
    with open(f"/proc/{pid}/status") as f:
        return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), 0)


def check_fits(b: Bundle, row_cache_mb: float = 0.0) -> Footprint:
    """Raises before loading when the predicted peak is over this process's budget."""
    fp = predict(b, row_cache_mb=row_cache_mb)
    budget, source = memory_budget()
    if budget and fp.peak > budget:
        raise EdgepackError(
            f"{b.path} needs about {fp.peak / MiB:,.0f} MiB ({fp.engine} engine) but this process may use "
            f"{budget / MiB:,.0f} MiB ({source}); refusing to load it. Predicted:\n" + "\n".join(fp.lines())
            + "\n(an export with a smaller --max-context or fewer --quant bits needs less; "
              "--no-memory-check loads it anyway)")
    return fp


def devices() -> dict[str, dict]:
    """Device profiles: RAM and what the OS keeps for itself, in MiB."""
    return json.loads(DEVICES_FILE.read_text())["devices"]


def device_budget(name: str) -> int:
    d = devices().get(name)
    if d is None:
        raise EdgepackError(f"unknown device {name!r}; known: {', '.join(devices())}")
    return (int(d["ram_mib"]) - int(d["os_reserve_mib"])) * MiB
