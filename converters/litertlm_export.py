"""TFLite lowering (litert-torch) and `.litertlm` packaging that Google's LiteRT-LM engine runs as is.

Sections: LlmMetadataProto (start/stop tokens, model type, context), HF_Tokenizer_Zlib, the main
`tf_lite_prefill_decode` model (signatures `prefill_<N>` and `decode`), and for Gemma 3n the
`tf_lite_embedder` and `tf_lite_per_layer_embedder` models that LiteRT-LM runs on the CPU, and
with an audio tower `tf_lite_audio_encoder_hw`, `tf_lite_audio_adapter` and `tf_lite_end_of_audio`
(LiteRT-LM's audio executor: runtime/executor/audio_litert_compiled_model_executor.cc).

The embedders' tables are plain constant buffers; their byte offsets inside the `.litertlm` go in
edgepack's manifest, so edgepack's runtime memory-maps the rows instead of running those graphs
(one copy of the 2B-parameter PLE table serves both engines).
"""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import torch

from edgepack import contract
from edgepack.errors import EdgepackError


def sample_inputs(cfg, length: int, context: int, lengths: list[int], embeddings: bool, per_layer: bool) -> dict:
    """Zeros of every input of a `length`-token call: token ids or embeddings, per-layer embeddings
    when the family's graph takes them (models/family.py), positions, mask and caches."""
    shapes = contract.cache_shapes(cfg.cache_layers, cfg.num_key_value_heads, lengths, cfg.head_dim)
    # nested under "kv_cache", "k_0" flattens to the signature name "kv_cache_k_0"
    kv = {name.removeprefix("kv_cache_"): torch.zeros(shape) for name, shape in shapes.items()}
    pos = torch.arange(length, dtype=torch.int32)
    inputs = {"input_pos": pos, "mask": torch.from_numpy(contract.causal_mask(pos.numpy(), context)), "kv_cache": kv}
    if embeddings:
        inputs["embeddings"] = torch.zeros(1, length, cfg.hidden_size)
    else:
        inputs["tokens"] = torch.ones(1, length, dtype=torch.int32)
    if per_layer:
        inputs["per_layer_embeddings"] = torch.zeros(
            1, length, cfg.num_hidden_layers, cfg.hidden_size_per_layer_input
        )
    return inputs


def convert_main(model, cfg, prefill_len: int, context: int, lengths: list[int], out: Path, embeddings: bool,
                 per_layer: bool) -> None:
    """`prefill_<N>` (caches only: LiteRT-LM samples from `decode`) and `decode` (caches + logits),
    the whole float graph at once: Gemma 3 (the 270M converts in 6 GB). Gemma 3n goes a piece at a
    time instead (litertlm_pieces.py); test_stitch compares the two."""
    import litert_torch

    prefill = copy.copy(model)  # shares the parameters, so both signatures share the weights
    prefill.emit_logits = False
    edge = (
        litert_torch.signature(
            contract.prefill_signature(prefill_len), prefill,
            sample_kwargs=sample_inputs(cfg, prefill_len, context, lengths, embeddings, per_layer),
        )
        .signature(contract.DECODE, model,
                   sample_kwargs=sample_inputs(cfg, 1, context, lengths, embeddings, per_layer))
        .convert()
    )
    edge.export(str(out))


def convert_single(module: torch.nn.Module, signature: str, out: Path) -> None:
    import litert_torch

    sample = {"token_ids": torch.ones(1, 1, dtype=torch.int32)}
    litert_torch.signature(signature, module, sample_kwargs=sample).convert().export(str(out))


def convert_audio(graph, src, plans: dict, end_id: int, work: Path, keep: Path | None = None,
                  progress=None) -> dict[str, Path]:
    """Gemma 3n's audio sections (models/gemma3n_audio.py): the encoder a piece at a time, each
    piece's weights read just before it and quantized just after (the float tower is never
    whole, as the text model's pieces: litertlm_pieces.py), then the adapter and end-of-audio.
    Each piece is lowered once for every recipe of a checkpoint when `keep` keeps lowerings."""
    import litert_torch
    from tqdm import tqdm

    from edgepack.converters import lowered, tflite_quant
    from edgepack.converters.decoder import load_weights, unload_weights
    from edgepack.converters.models import gemma3n_audio as ga
    from edgepack.converters.tflite_stitch import Piece, stitch
    from edgepack.system import release_freed_heap

    cfg = graph.model.audio_tower.config
    tokens = ga.ENCODER_FRAMES // ga.shrink(cfg)
    if tokens * ga.shrink(cfg) != ga.ENCODER_FRAMES:  # LiteRT-LM requires a whole number of tokens
        raise EdgepackError(f"the audio encoder's {ga.ENCODER_FRAMES} frames are not a multiple of its shrink {ga.shrink(cfg)}")

    def convert(name: str, module, sample: dict, params: list[str], out: Path) -> bool:
        """One graph lowered (or reused), then `params` quantized as planned; its weights must be loaded."""
        def lower(path: Path) -> None:
            with torch.no_grad(), ga.tflite_friendly():
                litert_torch.signature(name, module.eval(), sample_kwargs=sample).convert().export(str(path))
        settings = {"audio": name, "module": type(module).__qualname__, "frames": ga.ENCODER_FRAMES, "end_id": end_id,
                    "shapes": {k: [list(v.shape), str(v.dtype)] for k, v in sample.items()}}
        reused = lowered.lower_once(keep, module, settings, out, lower)
        quantized = {n: plans[n] for n in params if n in plans}
        if quantized:
            weights = {n: w.detach().numpy() for n, w in graph.named_parameters() if n in quantized}
            tflite_quant.quantize_file(out, quantized, weights)
        return reused

    wires = {"src_inputs": torch.zeros(1, ga.ENCODER_FRAMES, cfg.input_feat_size),
             "mask": torch.ones(1, ga.ENCODER_FRAMES, dtype=torch.bool)}
    pieces = []
    for piece in tqdm(ga.encoder_pieces(graph), desc="converting", unit="piece", leave=False, file=progress,
                      disable=None if progress else True):
        load_weights(graph, src, only=set(piece.params), progress=None)
        sample = {name: wires[wire] for name, wire in piece.inputs.items()}
        with torch.no_grad():  # the next piece's sample inputs
            wires |= {f"{piece.name}.{k}": v for k, v in piece.module.eval()(**sample).items()}
        path = work / f"{piece.name}.tflite"
        reused = convert("audio_encoder", piece.module, sample, piece.params, path)
        pieces.append(Piece(piece.name, path, piece.inputs, piece.outputs, reused))
        unload_weights(graph, piece.params)
        release_freed_heap()
    out = {"audio_encoder": work / "audio_encoder.tflite"}
    stitch(pieces, ["audio_encoder"], out["audio_encoder"])
    for piece in pieces:
        piece.path.unlink()

    embedder = [n for n, _ in graph.named_parameters() if n.startswith(ga.EMBEDDER)]
    load_weights(graph, src, only=set(embedder), progress=None)  # left loaded: the vocab store reads it
    for name, module, sample, quantized in (  # end-of-audio stays float, one row of the vocabulary
            ("audio_adapter", ga.LiteRtAdapter(graph), {"audio_mask": torch.ones(1, tokens, dtype=torch.bool),
                                                        "features": torch.zeros(1, tokens, cfg.hidden_size)}, embedder),
            ("end_of_audio", ga.LiteRtEndOfAudio(graph, end_id), {}, [])):
        out[name] = work / f"{name}.tflite"
        convert(name, module, sample, quantized, out[name])
    return out


def llm_metadata(model_type: str, bos: int, stop_ids: list[int], max_tokens: int, chat_template: str | None):
    from litert_lm_builder.runtime.proto import llm_metadata_pb2, llm_model_type_pb2

    md = llm_metadata_pb2.LlmMetadata()
    md.start_token.token_ids.ids.append(bos)
    for i in stop_ids:
        md.stop_tokens.add().token_ids.ids.append(i)
    md.max_num_tokens = max_tokens
    # the LlmModelType field named after the family, holding its (empty) message
    field = llm_model_type_pb2.LlmModelType.DESCRIPTOR.fields_by_name[model_type]
    md.llm_model_type.CopyFrom(llm_model_type_pb2.LlmModelType(**{model_type: getattr(llm_model_type_pb2, field.message_type.name)()}))
    if chat_template:
        md.jinja_prompt_template = chat_template
    return md


def package(out: Path, work: Path, tokenizer_json: Path, metadata, models: dict[str, Path]) -> None:
    from litert_lm_builder import litertlm_builder as lb

    md_path = work / "llm_metadata.pb"
    md_path.write_bytes(metadata.SerializeToString())
    builder = lb.LitertLmFileBuilder()
    builder.add_system_metadata(lb.Metadata(key="Authors", value="edgepack", dtype=lb.DType.STRING))
    builder.add_llm_metadata(str(md_path))
    builder.add_hf_tokenizer(str(tokenizer_json))
    kinds = {
        "prefill_decode": lb.TfLiteModelType.PREFILL_DECODE,
        "embedder": lb.TfLiteModelType.EMBEDDER,
        "per_layer_embedder": lb.TfLiteModelType.PER_LAYER_EMBEDDER,
        "audio_encoder": lb.TfLiteModelType.AUDIO_ENCODER_HW,
        "audio_adapter": lb.TfLiteModelType.AUDIO_ADAPTER,
        "end_of_audio": lb.TfLiteModelType.END_OF_AUDIO,
    }
    for name, path in models.items():
        builder.add_tflite_model(str(path), kinds[name])
    with open(out, "wb") as f:
        builder.build(f)


def read_sections(path: Path) -> list[dict]:
    """Section table of a `.litertlm`: data type, model_type, absolute byte range."""
    from litert_lm_builder import litertlm_core, litertlm_peek

    with open(path, "rb") as f:
        if f.read(8) != litertlm_core.HEADER_MAGIC_BYTES:
            raise EdgepackError(f"{path} is not a .litertlm file")
        f.seek(litertlm_core.HEADER_END_LOCATION_BYTE_OFFSET)
        end = struct.unpack("<Q", f.read(8))[0]
        f.seek(litertlm_core.HEADER_BEGIN_BYTE_OFFSET)
        from litert_lm_builder import litertlm_header_schema_py_generated as schema

        header = schema.LiteRTLMMetaData.GetRootAs(f.read(end - litertlm_core.HEADER_BEGIN_BYTE_OFFSET), 0)
    sections = header.SectionMetadata()
    out = []
    for i in range(sections.ObjectsLength()):
        s = sections.Objects(i)
        out.append({
            "data_type": litertlm_core.any_section_data_type_to_string(s.DataType()),
            "model_type": litertlm_peek.get_model_type(s),
            "offset": int(s.BeginOffset()),
            "size": int(s.EndOffset() - s.BeginOffset()),
        })
    return out
