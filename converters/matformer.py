"""MatFormer slicing of Gemma 3n (Mix-n-Match): a smaller model cut out of E4B's weights.

Gemma 3n E4B is trained with E2B nested in it, and Google published intermediate configurations
("Mix-n-Match", the MatFormer Lab notebook of the Gemma cookbook and its slicing-configs dataset).
A slice names the layers to skip and each kept layer's FFN width. The rules, as the notebook
applies them and as transformers' Gemma 3n reads the result:

- skipped layers' tensors are dropped and the kept layers renumbered;
- `gate_proj`/`up_proj` keep their first `width` rows, `down_proj` its first `width` columns;
- `per_layer_model_projection` (layers*256, hidden) keeps the row blocks of the kept layers, and
  `embed_tokens_per_layer` (vocab, layers*256) their column blocks;
- the config: `num_hidden_layers`, `intermediate_size` (per layer), `layer_types` and
  `activation_sparsity_pattern` of the kept layers, and `num_kv_shared_layers` less the skipped
  layers among the KV-shared ones. The last cache-owning layer of each attention kind (the
  layers the shared ones read their K/V from) can't be skipped.

`slice_source` applies a slice to an opened checkpoint on the fly (nothing written), so export,
profile and `edgepack slice` all read a sliced model through the same `Source` interface.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from edgepack.converters.source import Source
from edgepack.errors import EdgepackError

NARROW, WIDE = 2048 * 4, 2048 * 8  # E4B's two FFN widths, as the published table writes them
E4B_LAYERS = 35


def _published(wide: list[int], skip: tuple[int, ...] = ()) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(layers skipped, FFN width per kept layer): `wide` indexes the kept layers."""
    kept = E4B_LAYERS - len(skip)
    return skip, tuple(WIDE if i in wide else NARROW for i in range(kept))


def _span(a: int, b: int) -> list[int]:
    return list(range(a, b + 1))


# Google's table (gemma3n-slicing-configs, as printed in the MatFormer Lab notebook), checked row
# by row against it on 2026-12-03. The dataset calls the last block-level row "E3.79B" with 3.74B
# effective parameters; it is E3.74B-block here, after its size.
PUBLISHED: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "E2B": _published([], skip=tuple(_span(20, 24))),
    "E1.96B": _published([4], skip=tuple(_span(20, 24))),
    "E2.54B": _published([4, *_span(20, 24)]),
    "E2.69B": _published([4, 9, 14, *_span(19, 24)]),
    "E2.98B": _published([*_span(15, 24), *_span(30, 34)]),
    "E3.18B": _published([4, *_span(9, 24), 29, 34]),
    "E3.39B": _published([4, *_span(9, 29), 34]),
    "E3.59B": _published([*_span(4, 29), 34]),
    "E3.79B": _published(_span(4, 34)),
    "E4B": _published(_span(0, 34)),
    "E2.49B-block": _published(_span(20, 24)),
    "E2.73B-block": _published(_span(15, 24)),
    "E2.98B-block": _published(_span(10, 24)),
    "E3.24B-block": _published(_span(10, 29)),
    "E3.49B-block": _published(_span(5, 29)),
    "E3.74B-block": _published(_span(5, 34)),
}
EFFECTIVE_B = {"E2B": 1.91, "E1.96B": 1.96, "E2.54B": 2.54, "E2.69B": 2.69, "E2.98B": 2.98, "E3.18B": 3.18,
               "E3.39B": 3.39, "E3.59B": 3.59, "E3.79B": 3.79, "E4B": 3.98, "E2.49B-block": 2.49,
               "E2.73B-block": 2.73, "E2.98B-block": 2.98, "E3.24B-block": 3.24, "E3.49B-block": 3.49,
               "E3.74B-block": 3.74}  # the table's figures (billions), for reports


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str
    layers_to_skip: tuple[int, ...]
    ffn_hidden_dims: tuple[int, ...]  # one per kept layer, in the sliced model's order

    def kept(self, num_layers: int) -> list[int]:
        return [i for i in range(num_layers) if i not in self.layers_to_skip]


def load_slice(spec: str) -> Slice:
    """A published name (`E2.98B`, `E3.49B-block`, ...) or a JSON file with `layers_to_skip` and
    `ffn_hidden_dims` (the MatFormer Lab notebook's names)."""
    if spec in PUBLISHED:
        return Slice(spec, *PUBLISHED[spec])
    path = Path(spec)
    if not path.suffix == ".json":
        raise EdgepackError(f"unknown MatFormer configuration {spec!r}: give one of {', '.join(PUBLISHED)} "
                            "or a .json file with layers_to_skip and ffn_hidden_dims")
    if not path.is_file():
        raise EdgepackError(f"MatFormer configuration file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgepackError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or set(data) - {"layers_to_skip", "ffn_hidden_dims", "name"}:
        raise EdgepackError(f"{path}: a MatFormer configuration is an object with layers_to_skip and ffn_hidden_dims")
    skip, dims = data.get("layers_to_skip", []), data.get("ffn_hidden_dims")
    for key, value in (("layers_to_skip", skip), ("ffn_hidden_dims", dims)):
        if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
            raise EdgepackError(f"{path}: {key} must be a list of non-negative integers")
    if not dims or len(set(skip)) != len(skip):
        raise EdgepackError(f"{path}: ffn_hidden_dims must not be empty, and layers_to_skip must not repeat a layer")
    return Slice(str(data.get("name") or path.stem), tuple(sorted(skip)), tuple(dims))


def check(s: Slice, config: dict) -> None:
    """Refuses a slice this checkpoint can't give, with one line."""
    n = int(config["num_hidden_layers"])
    widths = _widths(config)
    out_of_range = [i for i in s.layers_to_skip if i >= n]
    if out_of_range:
        raise EdgepackError(f"{s.name}: layer {out_of_range[0]} is out of range (the checkpoint has {n} layers, 0-{n - 1})")
    if len(s.ffn_hidden_dims) != n - len(s.layers_to_skip):
        if n - len(s.layers_to_skip) < len(s.ffn_hidden_dims) or n < E4B_LAYERS and s.name in PUBLISHED:
            raise EdgepackError(f"{s.name} slices a {len(s.ffn_hidden_dims) + len(s.layers_to_skip)}-layer model; "
                                f"this checkpoint has {n} layers (already sliced, or not an E4B)")
        raise EdgepackError(f"{s.name}: {len(s.ffn_hidden_dims)} FFN widths for {n - len(s.layers_to_skip)} kept layers")
    first_shared = n - int(config.get("num_kv_shared_layers", 0))
    if first_shared < n:  # the layers the KV-shared ones read from
        types = layer_types(config)
        sources = sorted({max(j for j in range(first_shared) if types[j] == kind) for kind in set(types[first_shared:])})
        taken = [i for i in sources if i in s.layers_to_skip]
        if taken:
            raise EdgepackError(f"{s.name}: layer {taken[0]} can't be skipped: the KV-shared layers read its K/V "
                                f"(layers {', '.join(map(str, sources))} are the KV sources)")
    for new, (old, width) in enumerate(zip(s.kept(n), s.ffn_hidden_dims)):
        if width > widths[old]:
            raise EdgepackError(f"{s.name}: layer {old} (sliced layer {new}) asks for FFN width {width}; "
                                f"the checkpoint's is {widths[old]} (already narrower than asked)")
        if width == 0:
            raise EdgepackError(f"{s.name}: layer {old} asks for FFN width 0")


def _widths(config: dict) -> list[int]:
    inter, n = config["intermediate_size"], int(config["num_hidden_layers"])
    return list(inter) if isinstance(inter, list) else [int(inter)] * n


def layer_types(config: dict) -> list[str]:
    from edgepack.converters.models.family import layer_types as family_types

    return family_types(config, every=5)


def sliced_config(config: dict, s: Slice) -> dict:
    """The text decoder's config after the slice (the rest of the dict unchanged)."""
    check(s, config)
    n = int(config["num_hidden_layers"])
    kept = s.kept(n)
    shared = int(config.get("num_kv_shared_layers", 0))
    sparsity = config.get("activation_sparsity_pattern")
    types = layer_types(config)
    out = dict(config)
    out |= {"num_hidden_layers": len(kept), "intermediate_size": list(s.ffn_hidden_dims),
            "layer_types": [types[i] for i in kept],
            "num_kv_shared_layers": shared - sum(1 for i in s.layers_to_skip if i >= n - shared)}
    if sparsity is not None:
        out["activation_sparsity_pattern"] = [sparsity[i] for i in kept] if isinstance(sparsity, list) else sparsity
    return out


_LAYER = re.compile(r"^(model\.layers\.)(\d+)(\..+)$")
PLE_PROJECTION = "model.per_layer_model_projection.weight"
PLE_TABLE = "model.embed_tokens_per_layer.weight"
EMBEDDING = "model.embed_tokens.weight"
BLOCK_BYTES = 64 << 20  # float32 read at a time when a tensor is streamed


class Cut:
    """Where each tensor of the sliced model comes from, and how it is cut. Names are the text
    decoder's in "model...." form (Source's names)."""

    def __init__(self, config: dict, s: Slice):
        self.config, self.slice = sliced_config(config, s), s
        self.n = int(config["num_hidden_layers"])
        self.kept = s.kept(self.n)
        per_layer = int(config.get("hidden_size_per_layer_input", 256))
        self.ple_columns = np.concatenate([np.arange(i * per_layer, (i + 1) * per_layer) for i in self.kept])

    def renamed(self, old: str) -> str | None:
        """The sliced model's name for a source tensor; None when its layer is skipped."""
        m = _LAYER.match(old)
        if not m:
            return old
        i = int(m.group(2))
        return None if i in self.slice.layers_to_skip else f"{m.group(1)}{self.kept.index(i)}{m.group(3)}"

    def origin(self, name: str) -> str:
        m = _LAYER.match(name)
        return f"{m.group(1)}{self.kept[int(m.group(2))]}{m.group(3)}" if m else name

    def _width(self, name: str) -> int | None:
        m = _LAYER.match(name)
        return self.slice.ffn_hidden_dims[int(m.group(2))] if m and ".mlp." in name else None

    def shape(self, name: str, source_shape: tuple[int, ...]) -> tuple[int, ...]:
        width = self._width(name)
        if width is not None and name.endswith(("gate_proj.weight", "up_proj.weight")):
            return (width, *source_shape[1:])
        if width is not None and name.endswith("down_proj.weight"):
            return (source_shape[0], width)
        if name == PLE_PROJECTION:
            return (source_shape[0] // self.n * len(self.kept), source_shape[1])
        if name == PLE_TABLE:
            return (source_shape[0], source_shape[1] // self.n * len(self.kept))
        return source_shape

    def cut(self, name: str, x: np.ndarray) -> np.ndarray:
        """A source tensor (or a block of its rows, for row-wise cuts) as the slice has it."""
        width = self._width(name)
        if width is not None and name.endswith(("gate_proj.weight", "up_proj.weight")):
            return np.ascontiguousarray(x[:width])
        if width is not None and name.endswith("down_proj.weight"):
            return np.ascontiguousarray(x[:, :width])
        if name == PLE_PROJECTION:
            return np.ascontiguousarray(x.reshape(self.n, -1, x.shape[-1])[self.kept].reshape(-1, x.shape[-1]))
        if name == PLE_TABLE:
            return np.ascontiguousarray(x[:, self.ple_columns])
        return x

    def shapes(self, source_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The sliced model's tensor shapes from the source's ("model...." names)."""
        out = {new: self.shape(new, shape) for old, shape in source_shapes.items() if (new := self.renamed(old))}
        return dict(sorted(out.items()))

    def row_wise(self, name: str) -> bool:
        """Whether a block of source rows cuts to the same block of sliced rows."""
        return name != PLE_PROJECTION and not (self._width(name) and name.endswith(("gate_proj.weight", "up_proj.weight")))


def slice_source(src: Source, s: Slice) -> Source:
    """`src` as the slice: its config, tensor names, shapes and reads are the sliced model's."""
    if src.family.name != "gemma3n":
        raise EdgepackError(f"--matformer slices Gemma 3n checkpoints; {src.path} is {src.architecture}")
    cut = Cut(src.config, s)

    def read(name: str) -> np.ndarray:
        return cut.cut(name, src.read(cut.origin(name)))

    def read_rows(name: str, start: int, stop: int) -> np.ndarray:
        if not cut.row_wise(name):  # small: cut whole, then take the rows
            return read(name)[start:stop]
        return cut.cut(name, src.read_rows(cut.origin(name), start, stop))

    return dataclasses.replace(src, config=cut.config, read=read, shapes=cut.shapes(src.shapes),
                               read_rows=read_rows if src.read_rows else None,
                               storage=lambda name: src.storage(cut.origin(name)), raw=None)


def effective_params(shapes: dict[str, tuple[int, ...]]) -> int:
    """The MatFormer Lab notebook's "effective" parameters (transformers' language model's
    `num_parameters(exclude_embeddings=True)`): every text decoder tensor but the token embedding
    and the per-layer embedding table, the KV-shared layers' unused K/V projections included as
    the checkpoint holds them. The audio tower's tensors are not the text decoder's."""
    import math

    from edgepack.converters.models.gemma3n_audio import EMBEDDER, TOWER

    return sum(math.prod(shape) for name, shape in shapes.items()
               if name not in (EMBEDDING, PLE_TABLE) and not name.startswith((TOWER, EMBEDDER)))


SLICED_KEYS = ("num_hidden_layers", "intermediate_size", "layer_types", "num_kv_shared_layers",
               "activation_sparsity_pattern")


def write_slice(source: str | Path, spec: str, out: str | Path, force: bool = False, log=print) -> Path:
    """`edgepack slice`: a Hugging Face checkpoint folder in, the slice as one out: every tensor in
    its own dtype (the text decoder's cut, the audio and vision parts as they are), the config
    updated, the tokenizer and processor files copied. Tensor by tensor, a block of rows at a
    time: the peak is one block, not the model."""
    import math
    import shutil

    from tqdm import tqdm

    from edgepack.bundle import staging
    from edgepack.converters.safetensors_file import SafetensorsFile, write_shards
    from edgepack.converters.sources import open_source

    source = Path(source).expanduser()
    if not (source.is_dir() and (source / "config.json").is_file()):
        raise EdgepackError(f"{source} is not a Hugging Face checkpoint folder (slicing reads safetensors)")
    src = open_source(source)
    if src.family.name != "gemma3n":
        raise EdgepackError(f"slicing is for Gemma 3n (MatFormer) checkpoints; {source} is {src.architecture}")
    s = load_slice(spec)
    cut = Cut(src.config, s)
    prefix, text_key = src.family.architectures[src.architecture]
    full = json.loads((source / "config.json").read_text())
    text_config = full[text_key] if text_key else full
    text_config.update({k: cut.config[k] for k in SLICED_KEYS if k in cut.config or k in text_config})

    tensors, where = {}, {}
    for f in sorted(source.glob("*.safetensors")):
        h = SafetensorsFile(f)
        for raw, (dtype, shape, _) in h.tensors.items():
            new = raw
            if raw.startswith(prefix):
                renamed = cut.renamed("model." + raw[len(prefix):])
                if renamed is None:
                    continue
                new = prefix + renamed[len("model."):]
                shape = cut.shape(renamed, shape)
            tensors[new], where[new] = (dtype, shape), (h, raw)

    def blocks(name: str):
        h, raw = where[name]
        text = "model." + name[len(prefix):] if name.startswith(prefix) else None
        shape = h.shape(raw)
        if text is not None and not cut.row_wise(text):
            yield cut.cut(text, h.read(raw))
            return
        if not shape:
            yield h.read(raw)
            return
        step = max(1, BLOCK_BYTES // (4 * max(1, math.prod(shape[1:]))))
        for start in range(0, shape[0], step):
            x = h.read_rows(raw, start, min(shape[0], start + step))
            yield cut.cut(text, x) if text is not None else x

    total = sum(math.prod(shape) for _, shape in tensors.values())
    log(f"slicing: {s.name}, {src.config['num_hidden_layers']} -> {cut.config['num_hidden_layers']} layers, "
        f"{total / 1e9:.3f}B parameters to write")
    with staging(Path(out), force, complete_when="config.json") as stage, \
            tqdm(total=total, unit="param", unit_scale=True, desc="slicing", disable=None) as bar:  # a terminal only
        write_shards(stage, tensors, blocks, bar.update)
        for extra in sorted(source.iterdir()):  # tokenizer, chat template, processor and generation configs
            if extra.is_file() and extra.suffix != ".safetensors" and extra.name not in (
                    "config.json", "model.safetensors.index.json"):
                shutil.copy2(extra, stage / extra.name)
        (stage / "config.json").write_text(json.dumps(full, indent=2))  # last: marks the checkpoint complete
    return Path(out)
