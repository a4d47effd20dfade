"""What happens to each weight under a recipe, for one target format: the decision and its report.

Both exporters follow the same plan. A tensor is left float when its component is float in the
recipe or its rows don't split into the recipe's blocks. With `source_grid: keep` (the named
recipes), a GGUF tensor whose grid the format holds exactly is transcoded (ONNX: Q8_0/Q5_0/Q6_K as
8-bit, Q4_K as 4-bit codes plus per-block offsets), and a GGUF grid finer than the requested bits is
stored at 8 bits rather than rounded again. Everything else, and under `source_grid: requantize`
every tensor, is rounded to the recipe's grid (TFLite: by ai-edge-quantizer).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgepack.converters import quantize
from edgepack.converters.recipes import FLOAT, Recipe
from edgepack.converters.source import Source


@dataclasses.dataclass
class TensorPlan:
    name: str
    component: str
    shape: tuple[int, ...]
    source: str  # "F32", "BF16", "Q5_0", ...
    bits: int  # 32 = float
    block: int  # 0 = per channel
    how: str  # "float", "exact from Q8_0", "rounded", "rounded from Q5_0", ...
    measured_bytes: int | None = None  # set once the tensor is quantized (codes + scales + zero points)
    scale_bytes: int = 4  # per scale: float32, but float16 in a .litertlm's blocks (decide)

    @property
    def nbytes(self) -> int:
        """Stored weight bytes: measured when known, else codes + scales."""
        if self.measured_bytes is not None:
            return self.measured_bytes
        n = int(np.prod(self.shape))
        if self.bits == 32:
            return 4 * n
        scales = self.shape[0] * (self.shape[1] // self.block if self.block else 1)
        return n * self.bits // 8 + self.scale_bytes * scales

    def precision(self) -> str:
        if self.bits == 32:
            return "float32"
        return f"int{self.bits} " + (f"block {self.block}" if self.block else "per-channel")


_EXACT_ONNX = {"Q8_0": 8, "Q5_0": 8, "Q6_K": 8, "Q4_K": 4}  # source grid -> bits it is held at


EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"  # the tied LM head's own plan, where a format stores it apart


def plan_all(shapes: dict[str, tuple[int, ...]], recipe: Recipe, fmt: str, storage,
             head_apart: bool) -> dict[str, TensorPlan]:
    """The plan of every matrix, by tensor name. A recipe's `lm_head` applies to the tied
    embedding as the LM head reads it: where the format keeps the lookup table apart (`head_apart`:
    Gemma 3n's .litertlm has an embedder model of its own, memory-mapped as a row store) as a plan
    of its own under LM_HEAD; otherwise the format stores the table once, and at the head's
    precision, since the head is what reads it whole."""
    plans = {n: decide(n, s, recipe, fmt, storage(n)) for n, s in shapes.items() if len(s) == 2}
    if EMBEDDING in plans and "lm_head" in recipe.components:
        head = decide(EMBEDDING, shapes[EMBEDDING], recipe, fmt, storage(EMBEDDING), component="lm_head")
        if head_apart:
            plans[LM_HEAD] = dataclasses.replace(head, name=LM_HEAD)
        else:
            plans[EMBEDDING] = head
    return plans


def main_model_plans(plans: dict[str, TensorPlan]) -> dict[str, TensorPlan]:
    """The plans to quantize a .litertlm's main model with: there the tied embedding is only the
    LM head, so it takes the head's own plan where it has one."""
    return plans | {EMBEDDING: plans[LM_HEAD]} if LM_HEAD in plans else plans


def decide(name: str, shape: tuple[int, ...], recipe: Recipe, fmt: str, source: str,
           component: str | None = None) -> TensorPlan:
    """`component` overrides the one the tensor's name falls in."""
    component = component or recipe.component_of(name) or "other"
    p = recipe.components.get(component, FLOAT)
    if p.bits == 32 or len(shape) != 2:
        return TensorPlan(name, component, shape, source, 32, 0, "float")
    bits, block = p.bits, p.block_for(fmt)
    grid_bits = quantize.GRID_BITS.get(source, 32)
    if grid_bits < 16 and grid_bits > bits and recipe.source_grid == "keep":
        # never round an already-quantized tensor onto a coarser grid; TFLite's 8-bit weights
        # are per channel only
        bits, block = 8, (block if fmt == "onnx" else 0)
    exact_bits = _EXACT_ONNX.get(source, 99) if recipe.source_grid == "keep" else 99
    if fmt == "onnx" and exact_bits <= bits and not (bits == 8 and block > 32):
        # held exactly, never widened. An 8-bit block coarser than 32 asked for is rounded to:
        # onnxruntime's 8-bit kernel reads blocks of 128 1.2-1.9x faster, and the 270M's tied
        # embedding / LM head rounded into them scores as the exact Q8_0 (docs/quantization.md).
        exact_block = 16 if source == "Q6_K" else 32
        return TensorPlan(name, component, shape, source, exact_bits, exact_block, f"exact from {source}")
    if fmt == "onnx" and not block:
        block = 32  # MatMulNBits has no per-channel mode
    while fmt == "onnx" and block > 32 and shape[1] % block:
        block //= 2  # rows shorter than the block asked for: the largest block that splits them
    if block and shape[1] % block:
        return TensorPlan(name, component, shape, source, 32, 0, f"float (rows of {shape[1]} don't split into blocks of {block})")
    how = "rounded" if grid_bits >= 16 else f"rounded from {source}"
    # ai-edge-quantizer writes a TFLite weight's block scales as float16 (its per-channel ones as
    # float32): E2B's int4 graph holds 110 MiB of them, which float32 would have made 220
    return TensorPlan(name, component, shape, source, bits, block, how,
                      scale_bytes=2 if fmt != "onnx" and block else 4)


def qtensor(plan: TensorPlan, src: Source) -> quantize.QTensor:
    """The ONNX form of a planned tensor, read from the source as it is quantized: transcoded from
    the GGUF block data, or rounded a block of rows at a time (8-bit symmetric; 4-bit asymmetric
    with integer zero points, except the tied embedding, which GatherBlockQuantized reads without
    zero points)."""
    if plan.how.startswith("exact"):
        q = quantize.transcode_gguf(src.raw(plan.name))
    else:
        symmetric = plan.bits == 8 or plan.name == EMBEDDING
        q = quantize.round_rows(src.row_chunks(plan.name), plan.bits, plan.block, symmetric=symmetric)
        q.how = plan.how
    plan.measured_bytes = q.nbytes()
    return q


def summary(plans: list[TensorPlan]) -> dict:
    """Per component: precisions used, bytes, tensors exact / rounded / float."""
    out: dict[str, dict] = {}
    for p in plans:
        c = out.setdefault(p.component, {"precisions": [], "bytes": 0, "tensors": 0, "exact": 0, "rounded": 0, "float": 0})
        if p.precision() not in c["precisions"]:
            c["precisions"].append(p.precision())
        c["bytes"] += p.nbytes
        c["tensors"] += 1
        c["exact" if p.how.startswith("exact") else "rounded" if p.how.startswith("rounded") else "float"] += 1
    return out


def report(plans: list[TensorPlan]) -> list[dict]:
    return [{"tensor": p.name, "component": p.component, "shape": list(p.shape), "source": p.source,
             "stored": p.precision(), "how": p.how, "bytes": p.nbytes} for p in plans]
