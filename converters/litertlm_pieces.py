"""A `.litertlm` main model converted a piece at a time, so full-size Gemma 3n E2B/E4B export streams.

litert-torch converts float constants: E2B's main graph is 9.6 GB in float32 and its conversion
needs twice that. Converted whole it does not fit a 24 GB machine. Instead each piece (the family
declares its cuts and wires: models/gemma3n_pieces.py has the entry, one piece per decoder layer
and the exit) is converted with the `prefill_<N>` and `decode` signatures, its weights read from
the checkpoint just before and quantized by ai-edge-quantizer just after (the exit's LM head by
edgepack, never whole in float: convert_exit), then dropped. The pieces'
flatbuffers are stitched into the two signatures of one model (converters/tflite_stitch.py):
the operators a whole-graph conversion gives, plus a few small index and reshape ones it would
share between layers (tests/test_stitch.py), the weights stored once for both signatures.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgepack import contract
from edgepack.converters import lowered, quant_plan
from edgepack.converters.models.family import PieceSpec
from edgepack.converters.tflite_stitch import Piece
from edgepack.errors import EdgepackError

STAND_IN_ROWS = 64  # a table's rows a model is converted with before the whole table is put in


def sample_inputs(spec: PieceSpec, cfg, length: int, lengths: list[int], context: int) -> dict:
    """Zeros of each input's shape for a `length`-token call: the whole graph's inputs and caches
    as they are, the inner wires as the family describes them."""
    from edgepack.converters.litertlm_export import sample_inputs as model_inputs

    model = model_inputs(cfg, length, context, lengths, embeddings=True, per_layer=True)
    caches = {contract.k_cache_name(i): model["kv_cache"][f"k_{i}"] for i in cfg.cache_layers}
    caches |= {contract.v_cache_name(i): model["kv_cache"][f"v_{i}"] for i in cfg.cache_layers}
    inner = spec.inner_wires(cfg, length, lengths, context, model)
    out = {}
    for name, wire in spec.inputs.items():
        if wire in model:
            out[name] = model[wire]
        elif wire in caches:
            out[name] = caches[wire]
        elif name in ("k_cache", "v_cache"):  # a KV-shared layer reads its source layer's cache
            src = int(wire.split(".")[0].removeprefix("layer"))
            out[name] = caches[(contract.k_cache_name if name == "k_cache" else contract.v_cache_name)(src)]
        else:
            out[name] = inner[name]
    return out


def convert(spec: PieceSpec, cfg, prefill_len: int, lengths: list[int], context: int, out: Path,
            keep: Path | None = None) -> Piece:
    """Convert one piece with litert-torch, in float; its weights must be loaded. With `keep`
    (export --keep-lowered), a piece lowered before from the same weights and settings is reused:
    the recipes of one checkpoint share their float pieces (lowered.py)."""
    module = copy.copy(spec.module)  # the piece, over a copy of the model with only its weights
    module._modules = {"model": _pruned(spec.module.model, set(spec.params))}
    module.eval()

    def lower(path: Path) -> None:
        import litert_torch

        conv = None
        for sig in spec.signatures:
            length = 1 if sig == contract.DECODE else prefill_len
            sample = sample_inputs(spec, cfg, length, lengths, context)
            conv = (litert_torch.signature(sig, module, sample_kwargs=sample) if conv is None
                    else conv.signature(sig, module, sample_kwargs=sample))
        conv.convert().export(str(path))

    settings = {"piece": spec.name, "module": type(spec.module).__qualname__, "signatures": spec.signatures,
                "inputs": spec.inputs, "outputs": spec.outputs, "config": dataclasses.asdict(cfg),
                "prefill": prefill_len, "lengths": lengths, "context": context}
    reused = lowered.lower_once(keep, module, settings, out, lower)
    return Piece(spec.name, out, spec.inputs, spec.outputs, reused)


def _pruned(module: nn.Module, keep: set[str], prefix: str = "") -> nn.Module:
    """A shallow copy of `module` holding only the parameters in `keep` (full names): litert-torch
    lowers every parameter a module has, used or not, and the others are on the meta device.
    Submodules whose parameters are all left out become empty modules, so ModuleList indices still hold."""
    if not any(k.startswith(prefix) for k in keep) and any(True for _ in module.parameters()):
        return nn.Module()
    clone = copy.copy(module)
    clone._parameters = {n: p for n, p in module._parameters.items() if p is None or prefix + n in keep}
    clone._modules = {n: None if m is None else _pruned(m, keep, f"{prefix}{n}.") for n, m in module._modules.items()}
    return clone


def export_main(cut, model, cfg, src, plans: dict, prefill_len: int, context: int, lengths: list[int],
                work: Path, progress, keep: Path | None = None, note: Callable[[str], None] = lambda text: None) -> Path:
    """The `prefill_decode` model, cut as the family says (`cut`: its Family.litertlm_pieces),
    converted and quantized a piece at a time: the float weights
    of one piece (a decoder layer: 240 MB for E2B) at most. A quantized LM head (the exit's tied
    embedding: 2.1 GB in float) is never whole in float (convert_exit); the rest of each piece is
    quantized by ai-edge-quantizer."""
    from tqdm import tqdm

    from edgepack.converters import tflite_quant
    from edgepack.converters.decoder import load_weights, unload_weights
    from edgepack.converters.tflite_stitch import stitch
    from edgepack.system import release_freed_heap

    pieces = []
    quantize = any(p.bits != 32 for p in plans.values())
    plans = quant_plan.main_model_plans(plans)
    head = plans[quant_plan.EMBEDDING]
    for spec in tqdm(cut(model, cfg, prefill_len, lengths), desc="converting", unit="piece",
                     leave=False, file=progress, disable=None):
        path, rest = work / f"{spec.name}.tflite", list(spec.params)
        head_apart = spec.name == "exit" and head.bits != 32
        if head_apart:
            rest.remove(quant_plan.EMBEDDING)
        load_weights(model, src, only=set(rest), progress=None)
        pieces.append(convert_exit(spec, cfg, src, head, prefill_len, lengths, context, path, keep) if head_apart
                      else convert(spec, cfg, prefill_len, lengths, context, path, keep))
        if quantize:
            params = dict(model.named_parameters())
            tflite_quant.quantize_file(path, plans, {n: params[n].detach().numpy() for n in rest})
        unload_weights(model, rest)
        release_freed_heap()  # a conversion's freed heap, else the next piece starts GBs higher
    reused = sum(p.reused for p in pieces)
    if reused:
        note(f"{'every piece' if reused == len(pieces) else f'{reused} of {len(pieces)} pieces'} reused from {keep}")
    out = work / "model.tflite"
    stitch(pieces, [contract.prefill_signature(prefill_len), contract.DECODE], out)
    for piece in pieces:
        piece.path.unlink()
    return out


def export_table_model(module_for, name: str, src, plan, signature: str, out: Path) -> None:
    """An embedder model (token ids -> rows of one table) without the float table whole: convert
    and quantize it with the table's first rows, then put the whole table in, quantized per row a
    block of rows at a time with ai-edge-quantizer's own arithmetic (the bytes it would write)."""
    from ai_edge_litert import schema_py_generated as tfl
    from ai_edge_litert.tools import flatbuffer_utils as fb

    from edgepack.converters import litertlm_export as lx, tflite_quant, tflite_stitch

    width = _shape(src, name)[1]
    head = _first_rows(src, name, STAND_IN_ROWS)
    lx.convert_single(module_for(torch.from_numpy(head)), signature, out)
    if plan.bits != 32:
        tflite_quant.quantize_file(out, {name: plan}, {name: head})
    model = fb.read_model(str(out))
    g = model.subgraphs[0]
    lookups = [op for op in g.operators
               if model.operatorCodes[op.opcodeIndex].builtinCode == tfl.BuiltinOperator.EMBEDDING_LOOKUP]
    table = g.tensors[lookups[0].inputs[1]]
    if len(lookups) != 1 or list(table.shape) != [len(head), width]:
        raise EdgepackError(f"internal error: {signature} model has no single {len(head)}-row lookup table")
    _put_rows(model, g, table, src.row_chunks(name), plan.bits, block=0)  # the row store reads rows
    tflite_stitch.write(model, out)


def convert_exit(spec: PieceSpec, cfg, src, plan, prefill_len: int, lengths: list[int], context: int,
                 out: Path, keep: Path | None = None) -> Piece:
    """The exit piece with its LM head quantized, the float head never whole: converted with the
    tied embedding's first rows standing in for it (litert-torch holds about three float copies
    of a constant while converting: E2B's export peaked at 9.4 GB on its 2.1 GB head; 2.8 GB this
    way), then every row rounded in a block at a time (quantize_lm_head). The rest of the piece's
    weights must be loaded."""
    name = quant_plan.EMBEDDING
    stand_in = _first_rows(src, name, STAND_IN_ROWS)
    owner, _, attr = name.rpartition(".")
    params = spec.module.model.get_submodule(owner)._parameters
    whole, params[attr] = params[attr], nn.Parameter(torch.from_numpy(stand_in), requires_grad=False)
    try:
        piece = convert(spec, cfg, prefill_len, lengths, context, out, keep)
    finally:
        params[attr] = whole
    quantize_lm_head(out, plan, src, stand_in, cfg.final_logit_softcapping)
    return piece


def quantize_lm_head(path: Path, plan, src, stand_in, softcap: float | None) -> None:
    """Put the whole LM head into a piece converted with `stand_in` rows of it, quantized a block of
    rows at a time: the weight and the logits it feeds (elementwise softcap ops) get the vocabulary's
    size. The converter folds the softcap's 1/cap into a head of the stand-in's size (not into a
    full-size one, where it stays a MUL after the head: the same logits up to rounding); the fold
    is found bit for bit on the stand-in and applied to every row. The codes are ai-edge-quantizer's
    (tests/test_quantization.py compares the piece with its output)."""
    from ai_edge_litert import schema_py_generated as tfl
    from ai_edge_litert.tools import flatbuffer_utils as fb

    from edgepack.converters import tflite_stitch

    name, ops = quant_plan.EMBEDDING, tfl.BuiltinOperator
    rows = _shape(src, name)[0]
    model = fb.read_model(str(path))
    g = model.subgraphs[0]
    heads = []  # (op, fold): the fully connected op whose weight is the stand-in, folded
    for op in g.operators:
        w = g.tensors[op.inputs[1]] if len(op.inputs) > 1 else None
        if (model.operatorCodes[op.opcodeIndex].builtinCode != ops.FULLY_CONNECTED
                or list(w.shape) != list(stand_in.shape) or w.type != tfl.TensorType.FLOAT32):
            continue  # (a hidden size equal to the stand-in's rows gives other square weights)
        data = np.frombuffer(model.buffers[w.buffer].data, np.float32).reshape(stand_in.shape)
        heads += [(op, f) for f in _FOLDS if np.array_equal(f(stand_in, softcap), data)][:1]
    if len(heads) != 1:
        raise EdgepackError(f"internal error: {path.name} has no single LM head made of the stand-in rows")
    (head, fold), = heads
    t = g.tensors[head.inputs[1]]
    grown = {head.outputs[0]}  # the logits and the elementwise softcap ops after the head
    for op in g.operators:
        if any(i in grown for i in op.inputs):
            grown.update(o for o in op.outputs if list(g.tensors[o].shape)[-1:] == [len(stand_in)])
    for i in grown:
        for attr in ("shape", "shapeSignature"):
            dims = getattr(g.tensors[i], attr)
            if dims is not None and len(dims):
                setattr(g.tensors[i], attr, [*dims[:-1], rows])
    _put_rows(model, g, t, (fold(chunk, softcap) for chunk in src.row_chunks(name)), plan.bits, plan.block)
    tflite_stitch.write(model, path)


# How the converter may have folded logits / cap into the head's float32 rows.
_FOLDS = (lambda w, cap: w if cap is None else w / np.float32(cap),
          lambda w, cap: w if cap is None else w * (np.float32(1) / np.float32(cap)))


def _shape(src, name: str) -> tuple[int, ...]:
    return tuple(src.shapes[name]) if name in src.shapes else src.read(name).shape


def _first_rows(src, name: str, n: int) -> np.ndarray:
    """A 2-D checkpoint tensor's first n rows as float32, read without the rest."""
    width = _shape(src, name)[1]
    return np.ascontiguousarray(next(iter(src.row_chunks(name, max_bytes=n * 4 * width)))[:n])


def _put_rows(model, g, t, chunks, bits: int, block: int) -> None:
    """Tensor `t` of subgraph `g` becomes the table whose float32 row blocks `chunks` yields: as
    float32, or as ai-edge-quantizer stores it quantized (codes; scales per row, or per block of
    `block` columns in a float16 tensor of their own)."""
    from ai_edge_litert import schema_py_generated as tfl

    codes, scales, rows = [], [], 0
    for chunk in chunks:
        q, s = _quantize_rows(chunk, bits, block) if bits != 32 else (chunk.astype(np.float32), None)
        codes.append(q.reshape(-1).view(np.uint8))
        scales.append(s)
        rows += len(chunk)
    width = int(t.shape[1])
    t.shape = [rows, width]
    model.buffers[t.buffer].data = np.concatenate(codes)
    if bits == 32:
        return
    t.type = tfl.TensorType.INT4 if bits == 4 else tfl.TensorType.INT8
    q = t.quantization = tfl.QuantizationParametersT()
    q.quantizedDimension = 0
    if block:
        model.buffers.append(tfl.BufferT())
        model.buffers[-1].data = np.concatenate(scales).astype(np.float16).view(np.uint8).reshape(-1)
        s = tfl.TensorT()
        s.name, s.type, s.buffer = t.name + b"_scales", tfl.TensorType.FLOAT16, len(model.buffers) - 1
        s.shape = [rows, width // block]
        g.tensors.append(s)
        q.detailsType = tfl.QuantizationDetails.BlockwiseQuantization
        q.details = tfl.BlockwiseQuantizationT()
        q.details.scales, q.details.zeroPoints, q.details.blockSize = len(g.tensors) - 1, -1, block
    else:
        q.scale = np.concatenate(scales).astype(np.float32)
        q.zeroPoint = np.zeros(rows, np.int64)


def _quantize_rows(rows, bits: int, block: int = 0):
    """Symmetric codes (int4 packed two to a byte) and scales, per row or per block of `block`
    columns of a row, as ai-edge-quantizer makes them (blockwise scales: float16 of bfloat16)."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uq
    from ai_edge_quantizer.transformations.transformation_utils import pack_data

    rows = np.asarray(rows, np.float32)
    if block:
        blocks = rows.reshape(len(rows), -1, block)
        zp, scale = uq.tensor_zp_scale_from_min_max(blocks.min(2), blocks.max(2), bits, True,
                                                    qtyping.QuantGranularity(f"BLOCKWISE_{block}"))
        params = qtyping.UniformQuantParams(num_bits=bits, quantized_dimension=1, scale=scale, zero_point=zp,
                                            symmetric=True, block_size=block)
        return pack_data(bits, uq.uniform_quantize(rows, params, is_blockwise_quant=True)), scale
    zp, scale = uq.tensor_zp_scale_from_min_max(rows.min(1, keepdims=True), rows.max(1, keepdims=True), bits,
                                                True, qtyping.QuantGranularity.CHANNELWISE)
    params = qtyping.UniformQuantParams(num_bits=bits, quantized_dimension=0, scale=scale, zero_point=zp,
                                        symmetric=True)
    q = uq.uniform_quantize(rows, params)
    return pack_data(bits, q), scale.reshape(-1)
