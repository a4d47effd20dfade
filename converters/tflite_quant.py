"""TFLite quantization through Google's ai-edge-quantizer, one setting per weight.

ai-edge-quantizer selects ops by a regex on the op's "scope" (its output tensor names), and
litert-torch's names fuse several modules into one (`...self_attn;;...laurel...Linear_linear_left`),
so a regex per component would mis-assign ops. Instead each weight-bearing op is identified by its
constant weight: the buffer's bytes are matched to the checkpoint tensor they came from, and that
op's exact scope gets the tensor's planned precision. Ops that share a weight (the tied embedding's
lookup and LM head) get one setting, so the quantizer stores one quantized copy. A weight the
converter folded a scalar into (Gemma 3n's LM head carries the final softcap's 1/30) no longer has
its checkpoint bytes; it is recognised as a scalar multiple of a planned tensor of the same size.

Dynamic-range recipes, as Google's LiteRT-LM recipes: int8/int4 weights, activations quantized
on the fly by XNNPACK.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from edgepack.converters.quant_plan import TensorPlan
from edgepack.errors import EdgepackError

_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "EMBEDDING_LOOKUP")


def _digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a, dtype=np.float32).tobytes(), digest_size=16).digest()


def quantize_file(path: Path, plans: dict[str, TensorPlan], weights: dict[str, np.ndarray]) -> int:
    """Quantize `path` in place following `plans` (by tensor name); `weights` are the float
    tensors the graph was built from. Returns how many ops were quantized."""
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    by_digest = {_digest(weights[n]): n for n, p in plans.items() if p.bits != 32 and n in weights}
    by_size: dict[int, list[str]] = {}
    for n in by_digest.values():
        by_size.setdefault(weights[n].nbytes, []).append(n)
    model = tfl.read_model(str(path))
    settings: dict[str, tuple[str, TensorPlan]] = {}
    for sg in model.subgraphs:
        for op in sg.operators:
            op_name = _op_name(model, op)
            if op_name not in _OPS:
                continue
            for idx in op.inputs:
                if idx < 0:
                    continue
                data = model.buffers[sg.tensors[idx].buffer].data
                if data is None or len(data) < 64:
                    continue
                name = by_digest.get(hashlib.blake2b(np.asarray(data, np.uint8).tobytes(), digest_size=16).digest())
                name = name or _scaled_copy_of(np.frombuffer(data, np.uint8), by_size, weights)
                if name is None:
                    continue
                scope = tfl.get_op_scope(op, sg.tensors)
                previous = settings.get(scope)
                if previous and previous[1].precision() != plans[name].precision():
                    raise EdgepackError(f"ops sharing the scope {scope[:80]!r} need different precisions")
                settings[scope] = (op_name, plans[name])
    if not settings:
        return 0
    rm = recipe_manager.RecipeManager()
    op_enum = qtyping.TFLOperationName
    for scope, (op_name, plan) in settings.items():
        granularity = (qtyping.QuantGranularity(f"BLOCKWISE_{plan.block}") if plan.block
                       else qtyping.QuantGranularity.CHANNELWISE)
        rm.add_dynamic_config(regex=f"^{re.escape(scope)}$", operation_name=op_enum[op_name],
                              num_bits=plan.bits, granularity=granularity)
    q = quantizer.Quantizer(str(path))
    q.load_quantization_recipe(rm.get_quantization_recipe())
    result = q.quantize(enable_progress_report=False)
    result.export_model(str(path), overwrite=True)
    return len(settings)


def _scaled_copy_of(data: np.ndarray, by_size: dict[int, list[str]], weights: dict[str, np.ndarray]) -> str | None:
    """The planned tensor that `data` (a float32 constant) equals up to one scalar factor."""
    for name in by_size.get(len(data), []):
        w = weights[name].astype(np.float32, copy=False).reshape(-1)
        d = data.view(np.float32)
        probe = np.flatnonzero(w[:65536])
        if len(probe) == 0:
            continue
        c = float(np.median(d[probe] / w[probe]))
        if c != 0 and np.isfinite(c) and np.allclose(d, w * np.float32(c), rtol=1e-5, atol=1e-7 * abs(c)):
            return name
    return None


def _op_name(model, op) -> str:
    from ai_edge_litert import schema_py_generated as schema

    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    return _BUILTIN_NAMES.setdefault(builtin, next(
        (k for k, v in vars(schema.BuiltinOperator).items() if v == builtin and not k.startswith("_")), ""))


_BUILTIN_NAMES: dict[int, str] = {}
