"""Quantization recipes: which precision each component of the model gets.

A recipe is a JSON file (the named ones live in `converters/recipes/`; `--quant FILE` takes a
user's own). Components, by the checkpoint's tensor names:

    embedding        model.embed_tokens (the token lookup table, and the tied LM head unless
                     lm_head says otherwise)
    lm_head          the LM head (llama-quantize's --output-tensor-type). Gemma ties it to
                     embed_tokens; a Gemma 3n .litertlm keeps the lookup table in its own
                     memory-mapped embedder model, so the head, which every decode step reads
                     whole, can be coarser than the lookup. Formats that store the tied table
                     once (ONNX, Gemma 3 .litertlm) store it at this precision. Unset: embedding's.
    per_layer_table  model.embed_tokens_per_layer (Gemma 3n's PLE table, a memory-mapped row store)
    attention        self_attn.{q,k,v,o}_proj
    mlp              mlp.{gate,up,down}_proj
    per_layer        per_layer_input_gate, per_layer_projection, per_layer_model_projection
    altup_laurel     altup.* and laurel.* matrices, altup_projections, altup_unembed_projections
    audio_tower      Gemma 3n's audio encoder (model.audio_tower.*) and embed_audio's projection

Each component: `bits` (4, 8, or 32 = float), `block` (0 = one scale per output channel / table
row, else 32, 64 or 128 weights per scale) and optionally `onnx_block` (onnxruntime's MatMulNBits
has no per-channel mode). `source_grid`: what to do with a tensor a GGUF already stores quantized:
`keep` holds its own grid where the format can (exactly: an ONNX Q4_K tensor as 4-bit codes plus
per-block offsets) and stores a grid finer than the requested bits at 8 bits instead of rounding it
a second time; `requantize` rounds every tensor to the requested bits and blocks, as a converter
that dequantizes the GGUF first does.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from edgepack.errors import EdgepackError

RECIPES_DIR = Path(__file__).parent / "recipes"
COMPONENTS = ("embedding", "lm_head", "per_layer_table", "attention", "mlp", "per_layer", "altup_laurel", "audio_tower")
_BLOCKS = (0, 16, 32, 64, 128)

# component -> pattern on the checkpoint's (HF) tensor name
_PATTERNS = {
    "audio_tower": r"^model\.(audio_tower|embed_audio)\.",
    "embedding": r"(^|\.)embed_tokens\.weight$",
    "lm_head": r"^lm_head\.weight$",
    "per_layer_table": r"(^|\.)embed_tokens_per_layer\.weight$",
    "attention": r"\.self_attn\.[qkvo]_proj\.weight$",
    "mlp": r"\.mlp\.(gate|up|down)_proj\.weight$",
    "per_layer": r"per_layer_(input_gate|projection|model_projection)\.weight$",
    "altup_laurel": r"(\.altup\.|\.laurel\.|altup_(un)?(embed_)?projections).*weight$",
}


@dataclasses.dataclass(frozen=True)
class Precision:
    bits: int  # 4, 8, or 32 (float)
    block: int  # 0 = per output channel / per row
    onnx_block: int | None = None

    def block_for(self, fmt: str) -> int:
        return self.onnx_block if fmt == "onnx" and self.onnx_block is not None else self.block

    def describe(self, fmt: str) -> str:
        if self.bits == 32:
            return "float32"
        b = self.block_for(fmt)
        return f"int{self.bits} " + (f"block {b}" if b else "per-channel")


FLOAT = Precision(32, 0)


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    components: dict[str, Precision]
    source_grid: str = "keep"  # "keep" | "requantize"
    description: str = ""

    def component_of(self, tensor_name: str) -> str | None:
        return next((c for c, p in _PATTERNS.items() if re.search(p, tensor_name)), None)

    def precision_of(self, tensor_name: str) -> Precision:
        c = self.component_of(tensor_name)
        return self.components.get(c, FLOAT) if c else FLOAT

    def as_dict(self) -> dict:
        return {"name": self.name, "source_grid": self.source_grid,
                "components": {c: dataclasses.asdict(p) for c, p in self.components.items()}}


NONE = Recipe("none", {})


def named() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def load(spec: str) -> Recipe:
    """`none`, a named recipe (`int8`, `int4`) or a path to a recipe JSON file."""
    if spec == "none":
        return NONE
    path = RECIPES_DIR / f"{spec}.json" if spec in named() else Path(spec)
    if not path.is_file():
        raise EdgepackError(f"unknown quantization {spec!r}: use none, {', '.join(named())} or a recipe .json file")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgepackError(f"recipe {path}: not valid JSON ({e})") from None
    return parse(raw, where=str(path))


def parse(raw: dict, where: str = "recipe") -> Recipe:
    if not isinstance(raw, dict) or not isinstance(raw.get("components"), dict):
        raise EdgepackError(f"{where}: expected an object with a 'components' object")
    comps = {}
    for name, spec in raw["components"].items():
        if name not in COMPONENTS:
            raise EdgepackError(f"{where}: unknown component {name!r}; components are {', '.join(COMPONENTS)}")
        unknown = set(spec) - {"bits", "block", "onnx_block"}
        if unknown:
            raise EdgepackError(f"{where}: {name}: unknown keys {sorted(unknown)}")
        bits, block, onnx_block = spec.get("bits", 32), spec.get("block", 0), spec.get("onnx_block")
        if bits not in (4, 8, 32):
            raise EdgepackError(f"{where}: {name}: bits must be 4, 8 or 32, got {bits!r}")
        for b in (block, onnx_block):
            if b is not None and b not in _BLOCKS:
                raise EdgepackError(f"{where}: {name}: block must be one of {_BLOCKS}, got {b!r}")
        comps[name] = Precision(bits, block, onnx_block)
    grid = raw.get("source_grid", "keep")
    if grid not in ("keep", "requantize"):
        raise EdgepackError(f"{where}: source_grid must be 'keep' or 'requantize', got {grid!r}")
    unknown = set(raw) - {"name", "description", "source_grid", "components"}
    if unknown:  # a misspelt key would otherwise be ignored without a word
        raise EdgepackError(f"{where}: unknown keys {sorted(unknown)}")
    return Recipe(raw.get("name", Path(where).stem), comps, grid, raw.get("description", ""))
