"""`edgepack export`: checkpoint in, bundle out.

source (HF folder or GGUF) -> the plan (planner.py) -> TFLite (.litertlm) or ONNX graphs, the
memory-mapped row stores, the tokenizer and the manifest (the plan as written), all staged in a
hidden folder and renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import time
from pathlib import Path

from edgepack import bundle, plan
from edgepack.tflite_table import lookup_table
from edgepack.converters import lowered, matformer, quant_plan, recipes, row_tables, sources
from edgepack.converters.decoder import load_weights
from edgepack.converters.models import gemma3n_audio
from edgepack.converters.planner import ExportPlan, plan_export
from edgepack.converters.progress import Stages
from edgepack.converters.source import Source
from edgepack.errors import EdgepackError
from edgepack.system import release_freed_heap

DEFAULT_CONTEXT = 2048  # or the model's positions, when fewer
DEFAULT_PREFILL = 128  # tokens per prefill call of a .litertlm (LiteRT-LM's prefill_<N>), or the context


@dataclasses.dataclass
class ExportOptions:
    format: str  # "litertlm" | "onnx"
    quant: str = "none"  # "none", a named recipe (int8, int4, int4-head4) or a recipe .json path
    max_context: int | None = None  # None: DEFAULT_CONTEXT, or the model's positions when fewer
    prefill_len: int | None = None  # None: DEFAULT_PREFILL, or the context when shorter
    force: bool = False
    verbose: bool = False  # show the converters' own output instead of logging it
    keep_lowered: Path | None = None  # a folder keeping float TFLite lowerings for other recipes (lowered.py)
    matformer: str | None = None  # Gemma 3n: a MatFormer slice (name or .json) cut while reading (matformer.py)


def export(source: str | Path, out: str | Path, opts: ExportOptions, log=print) -> Path:
    if opts.format not in plan.FORMATS:
        raise EdgepackError(f"unknown format {opts.format!r}; choose from {', '.join(plan.FORMATS)}")
    recipe = recipes.load(opts.quant)
    mat_slice = matformer.load_slice(opts.matformer) if opts.matformer else None
    out = Path(out).expanduser()
    bundle.check_replaceable(out, opts.force, source=Path(source).expanduser())  # before any reading
    keep = None if opts.keep_lowered is None else Path(opts.keep_lowered).expanduser()
    if keep is not None:
        lowered.prepare(keep)
    t0 = time.time()
    src = sources.open_source(source)
    said = src.kind.lower() in src.architecture.lower()  # "Gemma3ForCausalLM (GGUF)" names its kind already
    log(f"source: {src.architecture}{'' if said else f' ({src.kind})'} from {src.path}")
    name = src.path.name
    if mat_slice is not None:
        src = matformer.slice_source(src, mat_slice)
        name = f"{src.path.name} (MatFormer {mat_slice.name})"
        log(f"slicing: MatFormer {mat_slice.name} while reading: {src.config['num_hidden_layers']} layers, FFN widths "
            f"{min(mat_slice.ffn_hidden_dims)}-{max(mat_slice.ffn_hidden_dims)}")
    if src.skipped:
        log(f"notice: skipping non-text components for now: {', '.join(src.skipped)}")
    context = opts.max_context or min(DEFAULT_CONTEXT, int(src.config.get("max_position_embeddings", DEFAULT_CONTEXT)))
    prefill = opts.prefill_len or min(DEFAULT_PREFILL, context)
    p = plan_export(src.family, src.config, recipe, opts.format, context, prefill, src.storage, src.audio)
    stages = Stages(opts.verbose, log)
    # ONNX takes the quantized modules as they are read; TFLite converts the float graph and
    # quantizes the flatbuffer after (tflite_quant), piecewise families a piece at a time, each
    # piece's weights read just before it (litertlm_pieces).
    in_graph = {n: t for n, t in p.tensors.items() if t.bits != 32} if opts.format == "onnx" else {}
    if not (opts.format == "litertlm" and p.family.piecewise_litertlm):
        with stages.stage(f"reading weights ({len(in_graph)} tensors quantized as they are read)" if in_graph
                          else "reading weights"):
            load_weights(p.decoder, src, in_graph, progress=stages.console)
    with bundle.staging(out, force=opts.force) as stage:
        (stage / "tokenizer.json").write_text(src.tokenizer_json)
        stop_ids = sorted(set(src.eos_ids) | ({106} if src.chat_template else set()))
        if opts.format == "onnx":
            written = _write_onnx(stage, p, src, stages)
        else:
            written = _write_litertlm(stage, p, src, stop_ids, stages, keep)
        if p.quantized:
            (stage / "quantization.json").write_text(json.dumps(
                {"recipe": recipe.as_dict(), "tensors": quant_plan.report(list(p.tensors.values()))}, indent=1))
            written["files"].append(("quantization.json", "quantization_report"))
            log("\n".join(["quantization:", *plan.component_lines(quant_plan.summary(list(p.tensors.values())))]))
        files = [bundle.file_entry(stage, path, role) for path, role in written["files"]]
        files.append(bundle.file_entry(stage, "tokenizer.json", "tokenizer"))
        bundle.write_manifest(stage, plan.BundlePlan(
            created_by="edgepack 0.1.0",
            runtime_format=opts.format,
            model=plan.Model(p.family.name, src.architecture, name, dataclasses.asdict(p.config)),
            max_context=p.max_context,
            graph=dataclasses.replace(p.graph, sections=written.get("sections")),
            precision=plan.Precision("quantized" if p.quantized else "fp32", recipe.name,
                                     quant_plan.summary(list(p.tensors.values()))),
            row_stores=written["row_stores"],
            tokenizer=plan.Tokenizer("tokenizer.json", src.bos_id, True, stop_ids),
            chat_template=src.chat_template,
            files=files,
            audio=written.get("audio"),
        ))
    stages.finish()
    log(f"wrote {out} ({opts.format}) in {time.time() - t0:.0f} s")
    return out


def _write_onnx(stage: Path, p: ExportPlan, src: Source, stages: Stages) -> dict:
    from edgepack.converters import onnx_export

    audio = p.audio_settings
    with stages.stage("lowering to ONNX"):
        onnx_export.export(p.decoder, p.config, p.max_context, p.graph.cache_lengths, stage / p.graph.file,
                           per_layer=p.family.per_layer_input("onnx"),
                           multimodal_offset=audio.multimodal_offset if audio else None)
    # the text graph is written: what comes after (the audio tower, the row stores) starts without
    # its weights (onnx_export frees the exporter's hold on them)
    p.decoder = None
    gc.collect()
    release_freed_heap()
    files = [(p.graph.file, "graph"), (p.graph.file + ".data", "weights")]
    row_stores, written = {}, {}
    if p.audio_settings is not None:
        audio_files, vocab_offset = _write_audio(stage, p, src, stages, row_stores)
        files += audio_files
        written["audio"] = _audio_entry(gemma3n_audio.ENCODER_FILE, p, src, vocab_offset)
    for name, table in p.tables.items():
        with stages.stage(f"writing the {name.replace('_', ' ')} store"):
            row_stores[name] = row_tables.write(stage / f"{name}.bin", src.row_chunks(table.tensor),
                                                p.tensors[table.tensor], table.scale(p.config))
        files.append((f"{name}.bin", name))
    return written | {"files": files, "row_stores": row_stores}


def _write_audio(stage: Path, p: ExportPlan, src: Source, stages: Stages,
                 row_stores: dict) -> tuple[list[tuple[str, str]], int]:
    """The audio encoder graph, quantized as its weights are read (its weights are apart from the
    text graph's, read after it is written: the export's peak stays the text graph's), and the
    multimodal vocabularies as a float row store; with the id of the store's first row."""
    from edgepack.converters import onnx_export

    name = gemma3n_audio.ENCODER_FILE
    quantized = {n: t for n, t in p.tensors.items() if t.bits != 32}
    graph = gemma3n_audio.AudioGraph.from_source(src)
    with stages.stage("reading the audio tower and lowering it to ONNX"):
        load_weights(graph, src, quantized, progress=stages.console)
        onnx_export.export_audio(graph, stage / name)
    vocab_file, vocab_offset = _write_multimodal_vocab(stage, graph, p, src, row_stores)
    return [(name, "audio_encoder"), (name + ".data", "audio_weights"), vocab_file], vocab_offset


def _write_multimodal_vocab(stage: Path, graph, p: ExportPlan, src: Source,
                            row_stores: dict) -> tuple[tuple[str, str], int]:
    """The multimodal ids' embeddings (`graph`'s embed_audio loaded; gemma3n_audio.vocab_table) as
    a float row store: its file entry and the id of its first row."""
    offset, table = graph.vocab_table(p.audio_settings, src)
    store = gemma3n_audio.VOCAB_STORE
    row_stores[store] = row_tables.write(stage / f"{store}.bin", [table], quant_plan.TensorPlan(
        store, "audio_tower", table.shape, "F32", 32, 0, "float"), 1.0)
    return (f"{store}.bin", store), offset


def _audio_entry(encoder: str, p: ExportPlan, src: Source, vocab_offset: int) -> plan.Audio:
    a = p.audio_settings
    return plan.Audio(encoder, gemma3n_audio.VOCAB_STORE, a.soft_tokens, a.start_id, a.soft_id, a.end_id,
                      vocab_offset, a.multimodal_offset, src.audio["preprocessor"] or {})


def _write_litertlm(stage: Path, p: ExportPlan, src: Source, stop_ids: list[int], stages: Stages,
                    keep_lowered: Path | None) -> dict:
    from edgepack.converters import litertlm_export as lx, litertlm_pieces, tflite_quant

    work = stage / "work"
    work.mkdir()
    lowering = f"lowering to TFLite (prefill_{p.prefill_len} + decode)"
    if p.family.piecewise_litertlm:  # streamed: a piece, then each table, at a time
        with stages.stage(lowering + ", a piece at a time, quantized as they come") as note:
            models = {"prefill_decode": litertlm_pieces.export_main(
                p.family.litertlm_pieces, p.decoder, p.config, src, p.tensors, p.prefill_len, p.max_context, p.graph.cache_lengths, work,
                stages.console, keep_lowered, note)}
    else:
        models = {"prefill_decode": work / "model.tflite"}
        settings = {"family": p.family.name, "config": dataclasses.asdict(p.config), "prefill": p.prefill_len,
                    "context": p.max_context, "cache_lengths": p.graph.cache_lengths,
                    "embeddings": p.graph.inputs == "embeddings", "per_layer": p.family.per_layer_input("litertlm")}
        with stages.stage(lowering) as note:
            if lowered.lower_once(keep_lowered, p.decoder, settings, models["prefill_decode"], lambda out: lx.convert_main(
                    p.decoder, p.config, p.prefill_len, p.max_context, p.graph.cache_lengths, out,
                    embeddings=settings["embeddings"], per_layer=settings["per_layer"])):
                note(f"reused from {keep_lowered}")
        if any(t.bits != 32 for t in p.tensors.values()):
            with stages.stage("quantizing with ai-edge-quantizer"):
                weights = {n: w.detach().numpy() for n, w in p.decoder.named_parameters()}
                tflite_quant.quantize_file(models["prefill_decode"], p.tensors, weights)
    if p.tables:
        with stages.stage(f"lowering the {' and '.join(t.signature.replace('_', ' ') for t in p.tables.values())}"):
            for table in p.tables.values():
                models[table.signature] = work / f"{table.signature}.tflite"
                litertlm_pieces.export_table_model(lambda rows, t=table: t.module(rows, p.config), table.tensor, src,
                                                   p.tensors[table.tensor], table.signature, models[table.signature])
    extra, audio, row_stores = [], None, {}
    if p.audio_settings is not None:
        graph = gemma3n_audio.AudioGraph.from_source(src)  # built here: its modules' imports stay out of the text stage
        audio_plans = {n: t for n, t in p.tensors.items() if t.component == "audio_tower" and t.bits != 32}
        with stages.stage(f"lowering the audio tower to TFLite ({gemma3n_audio.ENCODER_FRAMES} frames), a block at a time"
                          + (", quantized as they come" if audio_plans else "")):
            models |= lx.convert_audio(graph, src, audio_plans, p.audio_settings.end_id, work, keep_lowered,
                                      stages.console)
        vocab_file, vocab_offset = _write_multimodal_vocab(stage, graph, p, src, row_stores)
        audio = _audio_entry(p.graph.file, p, src, vocab_offset)
        extra.append(vocab_file)
    metadata = lx.llm_metadata(p.family.litertlm_model_type, src.bos_id, stop_ids, p.max_context, src.chat_template)
    with stages.stage("packaging model.litertlm"):
        lx.package(stage / p.graph.file, work, stage / "tokenizer.json", metadata, models)

    sections = [plan.Section(**s) for s in lx.read_sections(stage / p.graph.file)]
    for name, table in p.tables.items():  # where each table's rows sit inside the .litertlm
        sec = next(s for s in sections if s.model_type == table.section)
        where = lookup_table(models[table.signature].read_bytes())
        row_stores[name] = plan.RowStore(**where | {
            "file": p.graph.file, "offset": sec.offset + where["offset"], "scale": table.scale(p.config),
            **({"scales_offset": sec.offset + where["scales_offset"]} if "scales_offset" in where else {})})
    shutil.rmtree(work)
    return {"files": [(p.graph.file, "litertlm"), *extra], "sections": sections, "row_stores": row_stores,
            "audio": audio}
