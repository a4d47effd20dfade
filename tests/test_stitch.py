"""Gemma 3n's `.litertlm` main model is converted a piece at a time and stitched
(converters/litertlm_pieces.py, converters/tflite_stitch.py). Its numbers are checked against
transformers and Google's LiteRT-LM engine by test_equivalence / test_litertlm_engine /
test_quantization; here its structure against litert-torch's whole-graph conversion of the same
float model: every operator kind of the whole graph is there, and the weight-reading operators
(the work) exactly as many in each signature, so stitching added no matmul and pruning kept the
prefill signature free of the layers that only feed logits.
"""

from __future__ import annotations

import collections

from edgepack import contract
from edgepack.bundle import Bundle
from edgepack.converters import litertlm_export as lx, recipes, sources
from edgepack.converters.decoder import load_weights
from edgepack.converters.planner import plan_export
from checkpoints import TINY_CONTEXT, TINY_PREFILL

WORK = ("FULLY_CONNECTED", "BATCH_MATMUL", "EMBEDDING_LOOKUP", "DYNAMIC_UPDATE_SLICE")


def operator_counts(model) -> dict[str, collections.Counter]:
    from ai_edge_litert import schema_py_generated as tfl

    names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    out = {}
    for sd in model.signatureDefs:
        ops = model.subgraphs[sd.subgraphIndex].operators
        codes = [model.operatorCodes[op.opcodeIndex] for op in ops]
        out[sd.signatureKey.decode()] = collections.Counter(
            names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in codes)
    return out


def main_model(b: Bundle):
    from ai_edge_litert.tools import flatbuffer_utils as fb

    return fb.read_model_from_bytearray(bytearray(b.read_section(b.main_section)))


def cache_copies(b: Bundle) -> list[str]:
    """Operators that copy a whole KV cache instead of reading it where it is: a TRANSPOSE of a
    cache-shaped tensor, or a BATCH_MATMUL that reads one without adj_y (so the converter put a
    transposed copy in front of it)."""
    from ai_edge_litert import schema_py_generated as tfl

    model = main_model(b)
    names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    shapes = {tuple(s) for s in b.cache_shapes.values()}
    found = []
    for sd in model.signatureDefs:
        g = model.subgraphs[sd.subgraphIndex]
        for i, op in enumerate(g.operators):
            code = model.operatorCodes[op.opcodeIndex]
            kind = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
            reads = [tuple(g.tensors[t].shape) for t in op.inputs if t >= 0]
            if kind == "TRANSPOSE" and reads[0] in shapes \
                    or kind == "BATCH_MATMUL" and reads[1] in shapes and not op.builtinOptions.adjY:
                found.append(f"{sd.signatureKey.decode()} op {i}: {kind} of {reads}")
    return found


def test_attention_reads_the_caches_where_they_are(bundle):
    """Both attention products read each cache as stored (BATCH_MATMUL with adj_y, as Google's
    export_hf writes them with litert-torch's bmm_4d): a transposed copy would cost a whole cache
    of scratch and of memory traffic per layer and call. (The model with 2 KV heads: with one,
    litert-torch lowered torch.matmul's products to FULLY_CONNECTED with the cache as weights.)"""
    assert cache_copies(Bundle(bundle("gemma3n_multimodal", "litertlm"))) == []


def test_stitched_main_model_has_the_whole_graphs_operators(checkpoint, bundle, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils as fb

    stitched = operator_counts(main_model(Bundle(bundle("gemma3n_causal", "litertlm"))))

    src = sources.open_source(checkpoint("gemma3n_causal"))
    p = plan_export(src.family, src.config, recipes.NONE, "litertlm", TINY_CONTEXT, TINY_PREFILL, src.storage)
    load_weights(p.decoder, src, progress=None)
    lx.convert_main(p.decoder, p.config, TINY_PREFILL, TINY_CONTEXT, p.graph.cache_lengths, tmp_path / "whole.tflite",
                    embeddings=True, per_layer=True)
    whole = operator_counts(fb.read_model(str(tmp_path / "whole.tflite")))

    assert set(stitched) == set(whole) == {contract.prefill_signature(TINY_PREFILL), contract.DECODE}
    for sig in whole:
        # kinds, not counts: converted whole, a cache that two layers read (Gemma 3n's KV sharing)
        # gets a TRANSPOSE in front of its BATCH_MATMULs, which the pieces read in place
        assert set(whole[sig]) <= set(stitched[sig]), f"{sig}: operators missing from the stitched graph"
        for kind in WORK:
            assert stitched[sig][kind] == whole[sig][kind], (sig, kind)
    # prefill writes the caches and stops: fewer matmuls than decode, which runs every layer
    assert stitched[contract.prefill_signature(TINY_PREFILL)]["FULLY_CONNECTED"] < stitched[contract.DECODE]["FULLY_CONNECTED"]
