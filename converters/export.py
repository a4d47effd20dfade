"""`edgepack export`: checkpoint in, bundle out.

source (HF folder or GGUF) -> graph builder for the family -> TFLite (.litertlm) or ONNX, plus the
memory-mapped embedding stores, the tokenizer and the manifest, all staged and renamed atomically.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgepack import bundle, contract
from edgepack.converters import quant_plan, recipes, row_tables, sources
from edgepack.converters.progress import Stages
from edgepack.converters.models import gemma3, gemma3n
from edgepack.errors import EdgepackError

@dataclasses.dataclass
class ExportOptions:
    format: str  # "litertlm" | "onnx"
    quant: str = "none"  # "none", a named recipe (int8, int4) or a recipe .json path
    max_context: int = 2048
    prefill_len: int = 128
    force: bool = False
    verbose: bool = False  # show the converters' own output instead of logging it


def build_decoder(src: sources.Source, backend: str):
    """The family's graph module, built on the meta device: no weight memory until load_weights."""
    if src.family == "gemma3":
        cfg = gemma3.Gemma3Config.from_hf(src.config)
        cls = gemma3.Gemma3ForCausalLM
    else:
        cfg = gemma3n.Gemma3nConfig.from_hf(src.config)
        cls = gemma3n.Gemma3nForCausalLM
    with torch.device("meta"):
        model = cls(cfg, backend)
    return model.eval(), cfg


def load_weights(model: torch.nn.Module, src: sources.Source, quantized: dict | None = None,
                 progress=sys.stderr, only: set[str] | None = None) -> None:
    """Every parameter by its own name (the graph mirrors the checkpoint's naming), one tensor at a
    time, or just those in `only`. Tensors in `quantized` (ONNX plans) are read in row blocks,
    rounded and swapped for their quantized module as they come, so the float model never exists
    whole: exporting full-size E2B/E4B holds the quantized weights and one float tensor at most."""
    from edgepack.converters import onnx_quant

    quantized = quantized or {}
    params = {n: p for n, p in model.named_parameters() if only is None or n in only}
    bar = tqdm(params.items(), desc="reading weights", unit="tensor", leave=False, file=progress,
               disable=None if progress else True)
    for name, p in bar:
        shape = tuple(src.shapes[name]) if name in src.shapes else tuple(src.read(name).shape)
        if shape != tuple(p.shape):
            raise EdgepackError(f"{name}: checkpoint shape {shape}, config implies {tuple(p.shape)}")
        if name in quantized:
            onnx_quant.swap_in(model, {name: quant_plan.qtensor(quantized[name], src)})
            continue
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._parameters[attr] = torch.nn.Parameter(
            torch.from_numpy(src.read(name)), requires_grad=False)


def unload_weights(model: torch.nn.Module, names: list[str]) -> None:
    """Back to the meta device: a piece converted (litertlm_pieces) no longer needs its weights."""
    for name in names:
        owner, _, attr = name.rpartition(".")
        p = model.get_submodule(owner)._parameters[attr]
        model.get_submodule(owner)._parameters[attr] = torch.nn.Parameter(
            torch.empty(p.shape, device="meta"), requires_grad=False)


def export(source: str | Path, out: str | Path, opts: ExportOptions, log=print) -> Path:
    if opts.format not in bundle.FORMATS:
        raise EdgepackError(f"unknown format {opts.format!r}; choose from {', '.join(bundle.FORMATS)}")
    recipe = recipes.load(opts.quant)
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
    plans = plan_weights(model, src, recipe, opts.format)
    stages = Stages(opts.verbose)
    # ONNX takes the quantized modules as they are read; TFLite converts the float graph and
    # quantizes the flatbuffer after (tflite_quant), for Gemma 3n a piece at a time, each piece's
    # weights read just before it (litertlm_pieces).
    in_graph = {n: p for n, p in plans.items() if p.bits != 32} if opts.format == "onnx" else {}
    if not (opts.format == "litertlm" and src.family == "gemma3n"):
        with stages.stage(f"reading weights ({len(in_graph)} tensors quantized as they are read)" if in_graph
                          else "reading weights"):
            load_weights(model, src, in_graph, progress=stages.console)
    out = Path(out)
    with bundle.staging(out, force=opts.force) as stage:
        (stage / "tokenizer.json").write_text(src.tokenizer_json)
        stop_ids = sorted(set(src.eos_ids) | ({106} if src.chat_template else set()))
        if opts.format == "onnx":
            extra = _write_onnx(stage, model, cfg, src, opts, stages, plans)
        else:
            extra = _write_litertlm(stage, model, cfg, src, opts, stop_ids, stages, plans)
        quantized = recipe is not recipes.NONE
        if quantized:
            (stage / "quantization.json").write_text(json.dumps(
                {"recipe": recipe.as_dict(), "tensors": quant_plan.report(list(plans.values()))}, indent=1))
            extra["files"].append({"path": "quantization.json", "role": "quantization_report"})
            log(_quant_summary(plans))
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
                "cache_lengths": cache_lengths(cfg, opts),
                "num_kv_heads": cfg.num_key_value_heads,
                "head_dim": cfg.head_dim,
                "vocab_size": cfg.vocab_size,
                **({"sections": extra["sections"]} if "sections" in extra else {}),
            },
            "precision": {"weights": "quantized" if quantized else "fp32", "quantization": recipe.name,
                          "components": quant_plan.summary(list(plans.values()))},
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


PLE_TABLE = "model.embed_tokens_per_layer.weight"


def cache_lengths(cfg, opts: ExportOptions) -> list[int]:
    """Slots per cache layer (contract.cache_lengths): sliding-window layers keep a ring."""
    chunk = 1 if opts.format == "onnx" else opts.prefill_len
    return contract.cache_lengths(cfg.layer_types, cfg.cache_layers, cfg.sliding_window, opts.max_context, chunk)


def plan_weights(model: torch.nn.Module, src: sources.Source, recipe: recipes.Recipe, fmt: str) -> dict:
    """The plan for every matrix of the graph, plus Gemma 3n's PLE table (kept out of it)."""
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if src.family == "gemma3n":
        cfg = src.config
        shapes[PLE_TABLE] = (cfg["vocab_size_per_layer_input"], cfg["num_hidden_layers"] * cfg["hidden_size_per_layer_input"])
    return quant_plan.plan_all(shapes, recipe, fmt, src.storage, src.family)


def _quant_summary(plans: dict) -> str:
    from edgepack.inspect import component_lines

    return "\n".join(["quantization:", *component_lines(quant_plan.summary(list(plans.values())))])


def _write_onnx(stage: Path, model, cfg, src, opts: ExportOptions, stages: Stages, plans: dict) -> dict:
    from edgepack.converters import onnx_export

    with stages.stage("lowering to ONNX"):
        onnx_export.export(model, cfg, opts.max_context, cache_lengths(cfg, opts), stage / "model.onnx")
    files = [{"path": "model.onnx", "role": "graph"}, {"path": "model.onnx.data", "role": "weights"}]
    row_stores = {}
    if src.family == "gemma3n":
        scale = float(np.sqrt(cfg.hidden_size_per_layer_input))
        with stages.stage("writing the per-layer embedding store"):
            row_stores["per_layer_embeddings"] = row_tables.write(
                stage / "per_layer_embeddings.bin", src.row_chunks(PLE_TABLE), src.shapes[PLE_TABLE], plans[PLE_TABLE], scale)
        files.append({"path": "per_layer_embeddings.bin", "role": "per_layer_embeddings"})
    return {"graph_file": "model.onnx", "prefill_lengths": [], "inputs": "tokens",
            "files": files, "row_stores": row_stores}


def _write_litertlm(stage: Path, model, cfg, src, opts: ExportOptions, stop_ids: list[int],
                    stages: Stages, plans: dict) -> dict:
    from edgepack.converters import litertlm_export as lx, tflite_quant

    work = stage / "work"
    work.mkdir()
    lengths = cache_lengths(cfg, opts)
    lowering = f"lowering to TFLite (prefill_{opts.prefill_len} + decode)"
    tables = {}  # row store name -> checkpoint tensor
    if src.family == "gemma3n":  # streamed: a piece, then each table, at a time
        from edgepack.converters import litertlm_pieces

        tables = {"embeddings": "model.embed_tokens.weight", "per_layer_embeddings": PLE_TABLE}
        with stages.stage(lowering + ", a piece at a time, quantized as they come"):
            models = {"prefill_decode": litertlm_pieces.export_main(
                model, cfg, src, plans, opts.prefill_len, opts.max_context, lengths, work, stages.console)}
        with stages.stage("lowering the embedder and per-layer embedder"):
            scale = float(np.sqrt(cfg.hidden_size))
            for kind, module_for in (("embedder", lambda t: gemma3n.Embedder(t, scale)),
                                     ("per_layer_embedder", lambda t: gemma3n.PerLayerEmbedder(t, cfg))):
                name = tables["embeddings" if kind == "embedder" else "per_layer_embeddings"]
                models[kind] = work / f"{kind}.tflite"
                litertlm_pieces.export_table_model(module_for, name, src, plans[name], kind, models[kind])
    else:
        models = {"prefill_decode": work / "model.tflite"}
        with stages.stage(lowering):
            lx.convert_main(model, cfg, opts.prefill_len, opts.max_context, lengths, models["prefill_decode"])
        if any(p.bits != 32 for p in plans.values()):
            with stages.stage("quantizing with ai-edge-quantizer"):
                weights = {n: p.detach().numpy() for n, p in model.named_parameters()}
                tflite_quant.quantize_file(models["prefill_decode"], plans, weights)
    metadata = lx.llm_metadata(src.family, src.bos_id, stop_ids, opts.max_context, src.chat_template)
    with stages.stage("packaging model.litertlm"):
        lx.package(stage / "model.litertlm", work, src.family, stage / "tokenizer.json", metadata, models)

    sections = lx.read_sections(stage / "model.litertlm")
    row_stores = {}
    scales = {"embeddings": float(np.sqrt(cfg.hidden_size)),
              "per_layer_embeddings": float(np.sqrt(getattr(cfg, "hidden_size_per_layer_input", 1)))}
    owners = {"embeddings": "tf_lite_embedder", "per_layer_embeddings": "tf_lite_per_layer_embedder"}
    for name, tensor in tables.items():
        sec = next(s for s in sections if s["model_type"] == owners[name])
        where = lx.lookup_table((work / f"{owners[name].removeprefix('tf_lite_')}.tflite").read_bytes())
        row_stores[name] = where | {
            "file": "model.litertlm", "offset": sec["offset"] + where["offset"], "scale": scales[name],
            **({"scales_offset": sec["offset"] + where["scales_offset"]} if "scales_offset" in where else {})}
    shutil.rmtree(work)
    return {"graph_file": "model.litertlm", "prefill_lengths": [opts.prefill_len],
            "inputs": "embeddings" if src.family == "gemma3n" else "tokens",
            "files": [{"path": "model.litertlm", "role": "litertlm"}],
            "sections": sections, "row_stores": row_stores}
