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


def test_stitched_main_model_has_the_whole_graphs_operators(checkpoint, bundle, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils as fb

    b = Bundle(bundle("gemma3n_causal", "litertlm"))
    main = next(s for s in b.manifest["graph"]["sections"] if s["model_type"] == "tf_lite_prefill_decode")
    with open(b.path / "model.litertlm", "rb") as f:
        f.seek(main["offset"])
        stitched = operator_counts(fb.read_model_from_bytearray(bytearray(f.read(main["size"]))))

    src = sources.open_source(checkpoint("gemma3n_causal"))
    p = plan_export(src.family, src.config, recipes.NONE, "litertlm", TINY_CONTEXT, TINY_PREFILL, src.storage)
    load_weights(p.decoder, src, progress=None)
    lx.convert_main(p.decoder, p.config, TINY_PREFILL, TINY_CONTEXT, p.graph.cache_lengths, tmp_path / "whole.tflite",
                    embeddings=True, per_layer=True)
    whole = operator_counts(fb.read_model(str(tmp_path / "whole.tflite")))

    assert set(stitched) == set(whole) == {contract.prefill_signature(TINY_PREFILL), contract.DECODE}
    for sig in whole:
        assert not whole[sig] - stitched[sig], f"{sig}: operators missing from the stitched graph"
        for kind in WORK:
            assert stitched[sig][kind] == whole[sig][kind], (sig, kind)
    # prefill writes the caches and stops: fewer matmuls than decode, which runs every layer
    assert stitched[contract.prefill_signature(TINY_PREFILL)]["FULLY_CONNECTED"] < stitched[contract.DECODE]["FULLY_CONNECTED"]
