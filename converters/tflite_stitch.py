"""Stitching separately converted TFLite pieces into one multi-signature model.

Each piece is a `.tflite` with one subgraph per signature (`prefill_<N>`, `decode`). For every
signature the stitched model has one subgraph: the pieces' operators in order, a piece's inputs
wired to an earlier piece's outputs (or to the model's inputs, one tensor per name), tensors
renumbered, operator codes merged, each piece's buffers appended once (a piece's signatures
already share their weight buffers, so the stitched signatures do too). Operators that no
signature output depends on are dropped, as a whole-graph conversion's dead-code pass drops them
(prefill emits no logits, so the KV-shared layers fall away there).

Buffers go after the flatbuffer (`Buffer.offset`/`size`), the layout TFLite uses past 2 GB.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError

_ALIGN = 64  # buffer alignment after the flatbuffer (XNNPACK reads weights in place)


@dataclasses.dataclass
class Piece:
    name: str
    path: Path
    inputs: dict[str, str]  # piece input -> wire: a model input's name, or "<piece>.<output>"
    outputs: dict[str, str]  # model output -> piece output
    reused: bool = False  # copied from an earlier export's kept lowering (lowered.py), not lowered now


class _Signature:
    def __init__(self, key: str):
        from ai_edge_litert import schema_py_generated as tfl

        self.key = key
        self.graph = tfl.SubGraphT()
        self.graph.tensors, self.graph.operators = [], []
        self.wires: dict[str, int] = {}  # wire name -> tensor index
        self.inputs: dict[str, int] = {}
        self.outputs: dict[str, int] = {}


def stitch(pieces: list[Piece], signatures: list[str], out: Path) -> None:
    from ai_edge_litert import schema_py_generated as tfl
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = tfl.ModelT()
    model.version, model.description = 3, "edgepack: stitched from per-layer conversions"
    model.buffers, model.operatorCodes, model.metadata = [tfl.BufferT()], [], []
    codes: dict[tuple, int] = {}
    sigs = [_Signature(key) for key in signatures]
    for n, piece in enumerate(pieces):
        src = fb.read_model(str(piece.path))
        buffers = {0: 0}
        for b, buf in enumerate(src.buffers[1:], start=1):
            buffers[b] = len(model.buffers)
            model.buffers.append(buf)
        opcodes = []
        for code in src.operatorCodes:
            key = (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)
            if key not in codes:
                codes[key] = len(model.operatorCodes)
                model.operatorCodes.append(code)
            opcodes.append(codes[key])
        if n == 0:  # litert-torch's metadata (min runtime version ...) as the first piece has it
            for md in src.metadata or []:
                md.buffer = buffers[md.buffer]
                model.metadata.append(md)
        found = {_text(sd.signatureKey): sd for sd in src.signatureDefs}
        for sig in sigs:
            if sig.key in found:
                _append(sig, piece, src.subgraphs[found[sig.key].subgraphIndex], found[sig.key], buffers, opcodes)
    model.subgraphs, model.signatureDefs = [], []
    for index, sig in enumerate(sigs):
        if not sig.outputs:
            raise EdgepackError(f"internal error: no piece has the signature {sig.key}")
        _prune(sig)
        sig.graph.name = sig.key
        sig.graph.inputs, sig.graph.outputs = list(sig.inputs.values()), list(sig.outputs.values())
        sd = tfl.SignatureDefT()
        sd.signatureKey, sd.subgraphIndex = sig.key, index
        sd.inputs = [_tensor_map(name, i) for name, i in sig.inputs.items()]
        sd.outputs = [_tensor_map(name, i) for name, i in sig.outputs.items()]
        model.subgraphs.append(sig.graph)
        model.signatureDefs.append(sd)
    write(model, out)


def _tensor_map(name: str, index: int):
    from ai_edge_litert import schema_py_generated as tfl

    m = tfl.TensorMapT()
    m.name, m.tensorIndex = name, index
    return m


def _append(sig: _Signature, piece: Piece, graph, sd, buffers: dict[int, int], opcodes: list[int]) -> None:
    import copy

    tensors = sig.graph.tensors
    index: dict[int, int] = {}
    for tm in sd.inputs:
        name = _text(tm.name)
        wire = piece.inputs.get(name)
        if wire is None:
            raise EdgepackError(f"internal error: piece {piece.name} input {name} is not wired")
        ours = graph.tensors[tm.tensorIndex]
        if wire not in sig.wires:
            if "." in wire:
                raise EdgepackError(f"internal error: {piece.name}.{name} reads {wire}, not produced in {sig.key}")
            t = copy.copy(ours)
            t.name = wire
            sig.wires[wire] = sig.inputs[wire] = len(tensors)
            tensors.append(t)
        theirs = tensors[sig.wires[wire]]
        if list(theirs.shape) != list(ours.shape) or theirs.type != ours.type:
            raise EdgepackError(f"internal error: {piece.name}.{name} {list(ours.shape)} wired to {wire} "
                                f"{list(theirs.shape)}")
        index[tm.tensorIndex] = sig.wires[wire]
    first = len(tensors)
    for i, t in enumerate(graph.tensors):
        if i in index:
            continue
        t = copy.copy(t)
        t.buffer = buffers[t.buffer]
        t.name = f"{piece.name}/{_text(t.name)}"
        index[i] = len(tensors)
        tensors.append(t)
    for n in range(first, len(tensors)):
        tensors[n] = _renumber_scales(tensors[n], index)
    for op in graph.operators:
        op = copy.copy(op)
        op.opcodeIndex = opcodes[op.opcodeIndex]
        _renumber(op, index)
        sig.graph.operators.append(op)
    for tm in sd.outputs:
        name = _text(tm.name)
        sig.wires[f"{piece.name}.{name}"] = index[tm.tensorIndex]
    for model_output, name in piece.outputs.items():
        sig.outputs[model_output] = sig.wires[f"{piece.name}.{name}"]


def _scales_tensor(t) -> int | None:
    """ai-edge-quantizer's blockwise int4 weights keep their scales in another tensor, named by
    index in the weight's quantization details (not an operator input)."""
    from ai_edge_litert import schema_py_generated as tfl

    q = t.quantization
    if q is None or q.detailsType != tfl.QuantizationDetails.BlockwiseQuantization:
        return None
    if q.details.zeroPoints >= 0:
        raise EdgepackError("internal error: blockwise zero points are not stitched")
    return q.details.scales


def _renumber_scales(t, index: dict[int, int]):
    """`t` with its blockwise scales' tensor index renumbered (copied: the same tensor object may
    sit in several signatures' lists)."""
    import copy

    s = _scales_tensor(t)
    if s is None:
        return t
    t, t.quantization = copy.copy(t), copy.copy(t.quantization)
    t.quantization.details = copy.copy(t.quantization.details)
    t.quantization.details.scales = index[s]
    return t


def _text(s) -> str:
    return s.decode() if isinstance(s, bytes) else s


def _prune(sig: _Signature) -> None:
    """Drop operators no output depends on, then tensors nothing uses; renumber."""
    g = sig.graph
    needed = set(sig.outputs.values())
    kept = []
    for op in reversed(g.operators):
        if any(o in needed for o in op.outputs):
            kept.append(op)
            needed.update(i for i in op.inputs if i >= 0)
            needed.update(op.intermediates or [])
    kept.reverse()
    used = needed | set(sig.inputs.values())
    for op in kept:
        used.update(op.outputs)
    used.update(s for i in list(used) if (s := _scales_tensor(g.tensors[i])) is not None)
    new = {old: n for n, old in enumerate(sorted(used))}
    g.tensors = [_renumber_scales(g.tensors[old], new) for old in sorted(used)]
    for op in kept:
        _renumber(op, new)
    g.operators = kept
    sig.inputs = {k: new[v] for k, v in sig.inputs.items()}
    sig.outputs = {k: new[v] for k, v in sig.outputs.items()}


def write(model, out: Path) -> None:
    """Serialize with every non-empty buffer after the flatbuffer (offset/size), 64-byte aligned,
    written straight to the file: no copy of the weights in memory."""
    from ai_edge_litert import schema_py_generated as tfl
    from ai_edge_litert.tools import flatbuffer_utils as fb

    data = {}
    for b, buf in enumerate(model.buffers):
        if buf.data is not None and len(buf.data):
            data[b] = buf.data
            buf.data, buf.offset, buf.size = None, 1, 1  # placeholders keep the fields in the flatbuffer
    head = fb.convert_object_to_bytearray(model)
    packed = tfl.Model.GetRootAs(head, 0)
    where = _round_up(len(head))
    for b, d in data.items():
        fb.update_packed_buffer(packed.Buffers(b), offset=where, size=len(d))
        model.buffers[b].offset, model.buffers[b].size = where, len(d)
        where = _round_up(where + len(d))
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(head)
        for b, d in data.items():
            f.seek(model.buffers[b].offset)
            f.write(d if isinstance(d, (bytes, bytearray, memoryview)) else np.asarray(d, np.uint8).reshape(-1).data)
        f.truncate(where)
    os.replace(tmp, out)


def _round_up(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _renumber(op, mapping) -> None:
    """Points an operator's tensors through `mapping` (-1, an omitted optional input, stays)."""
    op.inputs = [mapping[i] if i >= 0 else i for i in op.inputs]
    op.outputs = [mapping[i] for i in op.outputs]
    if op.intermediates is not None and len(op.intermediates):
        op.intermediates = [mapping[i] for i in op.intermediates]
