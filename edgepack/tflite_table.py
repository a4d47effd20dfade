"""Where an embedder `.tflite` keeps its lookup table: read by export, to record a `.litertlm`
row store in the manifest, and by the runtime, to check the manifest against the model before a
row is gathered (a row store shifted inside the file would otherwise read wrong rows).

Only the flatbuffer's tables are read (schema: ai-edge-litert's `schema_py_generated`), through a
buffer that may be a memory map of a multi-GB section: the table's own bytes are never touched.
"""

from __future__ import annotations

import numpy as np

from edgepack.errors import EdgepackError

_INT_TYPES = {9: "int8", 17: "int4"}  # schema TensorType INT8, INT4


def lookup_table(tflite) -> dict:
    """The EMBEDDING_LOOKUP table of an embedder model (`tflite`: bytes, or a memoryview of a
    mapped section): byte offsets (inside the .tflite) of its data and, when ai-edge-quantizer made
    it int8/int4 per row, of its scales; its shape, dtype and block."""
    from ai_edge_litert import schema_py_generated as tfl

    model = tfl.Model.GetRootAsModel(tflite, 0)
    g = model.Subgraphs(0)
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != tfl.BuiltinOperator.EMBEDDING_LOOKUP:
            continue
        t = g.Tensors(op.Inputs(1))
        buf = model.Buffers(t.Buffer())
        start = int(buf.Offset()) if buf.Offset() > 1 else buf._tab.Vector(buf._tab.Offset(4))
        shape = [int(d) for d in t.ShapeAsNumpy()]
        out = {"offset": start, "shape": shape}
        if t.Type() == tfl.TensorType.FLOAT32:
            return out | {"dtype": "float32"}
        if t.Type() not in _INT_TYPES:
            break
        q = t.Quantization()
        if q.ScaleLength() != shape[0] or q.QuantizedDimension() != 0 or np.any(q.ZeroPointAsNumpy()):
            raise EdgepackError("embedder table is not quantized per row, symmetric (the layout edgepack reads)")
        scales_offset = q._tab.Vector(q._tab.Offset(8))
        return out | {"dtype": _INT_TYPES[t.Type()], "block": shape[1], "scales_offset": scales_offset}
    raise EdgepackError("no readable EMBEDDING_LOOKUP table in the embedder model")
