"""`edgepack export`: checkpoint in, bundle out.

source (HF folder or GGUF) -> graph builder for the family -> TFLite (.litertlm) or ONNX, plus the
memory-mapped embedding stores, the tokenizer and the manifest, all staged and renamed atomically.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgepack import bundle
from edgepack.converters import sources
from edgepack.converters.progress import Stages
from edgepack.converters.models import gemma3, gemma3n
from edgepack.errors import EdgepackError

QUANT_CHOICES = ("none",)


@dataclasses.dataclass
class ExportOptions:
    format: str  # "litertlm" | "onnx"
    quant: str = "none"
    max_context: int = 2048
    prefill_len: int = 128
    force: bool = False
    verbose: bool = False  # show the converters' own output instead of logging it


def build_decoder(src: sources.Source, backend: str):
    if src.family == "gemma3":
        cfg = gemma3.Gemma3Config.from_hf(src.config)
        model = gemma3.Gemma3ForCausalLM(cfg, backend)
    else:
        cfg = gemma3n.Gemma3nConfig.from_hf(src.config)
        model = gemma3n.Gemma3nForCausalLM(cfg, backend)
    load_weights(model, src)
    return model.eval(), cfg


def load_weights(model: torch.nn.Module, src: sources.Source) -> None:
    """Every parameter by its own name: the graph mirrors the checkpoint's naming."""
    params = dict(model.named_parameters())
    for name, p in tqdm(params.items(), desc="loading weights", unit="tensor", leave=False, file=sys.stderr):
        w = torch.from_numpy(src.read(name))
        if tuple(w.shape) != tuple(p.shape):
            raise EdgepackError(f"{name}: checkpoint shape {tuple(w.shape)}, config implies {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(w)


def export(source: str | Path, out: str | Path, opts: ExportOptions, log=print) -> Path:
    if opts.format not in bundle.FORMATS:
        raise EdgepackError(f"unknown format {opts.format!r}; choose from {', '.join(bundle.FORMATS)}")
    if opts.quant not in QUANT_CHOICES:
        raise EdgepackError(f"unknown quantization {opts.quant!r}; choose from {', '.join(QUANT_CHOICES)}")
    if not 1 <= opts.prefill_len <= opts.max_context:
        raise EdgepackError(f"--prefill-len must be between 1 and --max-context ({opts.max_context})")
    t0 = time.time()
    src = sources.open_source(source)
    log(f"source: {src.architecture} ({src.kind}) from {src.path}")
    if src.skipped:
        log(f"notice: skipping non-text components for now: {', '.join(src.skipped)}")
    max_pos = int(src.config.get("max_position_embeddings", 32768))
    if opts.max_context > max_pos:
        raise EdgepackError(f"--max-context {opts.max_context} exceeds the model's {max_pos} positions")

    backend = "tflite" if opts.format == "litertlm" else "onnx"
    model, cfg = build_decoder(src, backend)
    stages = Stages(opts.verbose)
    out = Path(out)
    with bundle.staging(out, force=opts.force) as stage:
        (stage / "tokenizer.json").write_text(src.tokenizer_json)
        stop_ids = sorted(set(src.eos_ids) | ({106} if src.chat_template else set()))
        if opts.format == "onnx":
            extra = _write_onnx(stage, model, cfg, src, opts, stages)
        else:
            extra = _write_litertlm(stage, model, cfg, src, opts, stop_ids, stages)
        files = [bundle.file_entry(stage, f["path"], f["role"]) for f in extra["files"]]
        files.append(bundle.file_entry(stage, "tokenizer.json", "tokenizer"))
        manifest = {
            "created_by": "edgepack 0.1.0",
            "runtime_format": opts.format,
            "model": {
                "family": src.family,
                "architecture": src.architecture,
                "source": src.path.name,
                "config": dataclasses.asdict(cfg),
            },
            "max_context": opts.max_context,
            "graph": {
                "file": extra["graph_file"],
                "prefill_lengths": extra["prefill_lengths"],
                "inputs": extra["inputs"],
                "cache_layers": cfg.cache_layers,
                "num_kv_heads": cfg.num_key_value_heads,
                "head_dim": cfg.head_dim,
                "vocab_size": cfg.vocab_size,
                **({"sections": extra["sections"]} if "sections" in extra else {}),
            },
            "precision": {"weights": "fp32", "quantization": opts.quant},
            "row_stores": extra["row_stores"],
            "tokenizer": {
                "file": "tokenizer.json",
                "bos_id": src.bos_id,
                "add_bos": True,
                "stop_ids": stop_ids,
            },
            "chat_template": src.chat_template,
            "files": files,
        }
        bundle.write_manifest(stage, manifest)
    stages.finish()
    log(f"wrote {out} ({opts.format}) in {time.time() - t0:.0f} s")
    return out


def _per_layer_table(src: sources.Source) -> np.ndarray:
    return np.ascontiguousarray(src.read("model.embed_tokens_per_layer.weight"))


def _row_store(file: str, offset: int, table: np.ndarray, scale: float) -> dict:
    return {"file": file, "offset": int(offset), "dtype": "float32", "shape": list(table.shape), "scale": scale}


def _write_onnx(stage: Path, model, cfg, src, opts: ExportOptions, stages: Stages) -> dict:
    from edgepack.converters import onnx_export

    with stages.stage("lowering to ONNX"):
        onnx_export.export(model, cfg, opts.max_context, stage / "model.onnx")
    files = [{"path": "model.onnx", "role": "graph"}, {"path": "model.onnx.data", "role": "weights"}]
    row_stores = {}
    if src.family == "gemma3n":
        table = _per_layer_table(src)
        table.tofile(stage / "per_layer_embeddings.bin")
        files.append({"path": "per_layer_embeddings.bin", "role": "per_layer_embeddings"})
        row_stores["per_layer_embeddings"] = _row_store(
            "per_layer_embeddings.bin", 0, table, float(np.sqrt(cfg.hidden_size_per_layer_input))
        )
    return {"graph_file": "model.onnx", "prefill_lengths": [], "inputs": "tokens",
            "files": files, "row_stores": row_stores}


def _write_litertlm(stage: Path, model, cfg, src, opts: ExportOptions, stop_ids: list[int],
                    stages: Stages) -> dict:
    from edgepack.converters import litertlm_export as lx

    work = stage / "work"
    work.mkdir()
    models = {"prefill_decode": work / "model.tflite"}
    with stages.stage(f"lowering to TFLite (prefill_{opts.prefill_len} + decode)"):
        lx.convert_main(model, cfg, opts.prefill_len, opts.max_context, models["prefill_decode"])
    tables = {}
    if src.family == "gemma3n":
        tables["embeddings"] = model.model.embed_tokens.weight.detach().numpy()
        tables["per_layer_embeddings"] = _per_layer_table(src)
        with stages.stage("lowering the embedder and per-layer embedder"):
            lx.convert_single(gemma3n.Embedder(torch.from_numpy(tables["embeddings"]),
                                               float(np.sqrt(cfg.hidden_size))), "embedder", work / "embedder.tflite")
            lx.convert_single(gemma3n.PerLayerEmbedder(torch.from_numpy(tables["per_layer_embeddings"]), cfg),
                              "per_layer_embedder", work / "per_layer_embedder.tflite")
        models["embedder"] = work / "embedder.tflite"
        models["per_layer_embedder"] = work / "per_layer_embedder.tflite"
    metadata = lx.llm_metadata(src.family, src.bos_id, stop_ids, opts.max_context, src.chat_template)
    with stages.stage("packaging model.litertlm"):
        lx.package(stage / "model.litertlm", work, src.family, stage / "tokenizer.json", metadata, models)

    sections = lx.read_sections(stage / "model.litertlm")
    row_stores = {}
    if tables:
        blob = (stage / "model.litertlm").read_bytes()
        scales = {"embeddings": float(np.sqrt(cfg.hidden_size)),
                  "per_layer_embeddings": float(np.sqrt(cfg.hidden_size_per_layer_input))}
        owners = {"embeddings": "tf_lite_embedder", "per_layer_embeddings": "tf_lite_per_layer_embedder"}
        for name, table in tables.items():
            sec = next(s for s in sections if s["model_type"] == owners[name])
            inner = lx.constant_offset(blob[sec["offset"]:sec["offset"] + sec["size"]], table)
            row_stores[name] = _row_store("model.litertlm", sec["offset"] + inner, table, scales[name])
    shutil.rmtree(work)
    return {"graph_file": "model.litertlm", "prefill_lengths": [opts.prefill_len],
            "inputs": "embeddings" if src.family == "gemma3n" else "tokens",
            "files": [{"path": "model.litertlm", "role": "litertlm"}],
            "sections": sections, "row_stores": row_stores}
