"""The typed description of a bundle: what the exporter plans and writes as manifest.json, what
`Bundle` reads back, and what profile, the footprint and the runtime compute from. One set of
types for both directions, so a field means the same thing to the writer and every reader.

Reading is validation: a manifest comes from whoever made the bundle, so every field is checked
for its type and range, and every path for being a plain relative path inside the bundle, before
anything else is read (docs/security.md). A bad field is one line naming it, never a traceback.
docs/bundle-format.md describes each field.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import PurePosixPath
from typing import Any

from edgepack import contract
from edgepack.errors import EdgepackError

FORMAT_NAME = "edgepack-bundle"
SCHEMA_VERSION = 1
FORMATS = ("litertlm", "onnx")
GRAPH_INPUTS = ("tokens", "embeddings")
STORE_DTYPES = {"float32": 32, "int8": 8, "int4": 4}  # row store dtype -> bits per value
MAIN_SECTION = "tf_lite_prefill_decode"  # the .litertlm section with the prefill/decode graphs
AUDIO_SECTIONS = ("tf_lite_audio_encoder_hw", "tf_lite_audio_adapter")  # Gemma 3n's audio encoder, then adapter
MAX_CONTEXT = 1 << 20  # a manifest's bound: well past any Gemma's positions; keeps arithmetic on hostile values sane
MAX_EXPORT_CONTEXT = 32_768  # what export and profile plan for: Gemma 3 and 3n's positions


def _meta(**kw) -> dict:
    return {"metadata": kw}


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """A file of the bundle, with what it must hash to."""
    path: str = dataclasses.field(**_meta(path=True))
    role: str
    size: int = dataclasses.field(**_meta(min=0))
    sha256: str = dataclasses.field(**_meta(hex=64))


@dataclasses.dataclass(frozen=True)
class Section:
    """A section of a `.litertlm` (its own table, copied here by the exporter)."""
    data_type: str
    model_type: str | None
    offset: int = dataclasses.field(**_meta(min=0))
    size: int = dataclasses.field(**_meta(min=0))


@dataclasses.dataclass(frozen=True)
class Graph:
    file: str = dataclasses.field(**_meta(path=True))
    prefill_lengths: list[int] = dataclasses.field(**_meta(min=1, max=MAX_CONTEXT))  # [] = any length (ONNX)
    inputs: str = dataclasses.field(**_meta(choices=GRAPH_INPUTS))
    cache_layers: list[int] = dataclasses.field(**_meta(min=0, max=4096))
    cache_lengths: list[int] = dataclasses.field(**_meta(min=1, max=MAX_CONTEXT))
    num_kv_heads: int = dataclasses.field(**_meta(min=1, max=4096))
    head_dim: int = dataclasses.field(**_meta(min=1, max=65536))
    vocab_size: int = dataclasses.field(**_meta(min=1, max=1 << 24))
    sections: list[Section] | None = None
    # ONNX graphs whose attention is onnxruntime's GroupQueryAttention: K and V caches alike
    # [1, KVH, L, D], updated by the graph itself in the buffers the runtime binds as both its
    # input and its present_* output; a sliding layer's cache is the kernel's windowed one
    # (contract.window_rows). False: the graph outputs the chunk's K/V and the runtime writes them.
    group_query: bool = False

    @property
    def prefill_length(self) -> int | None:
        """Tokens per prefill call of a fixed-length graph (TFLite's prefill_<N>); None when the
        graph takes any length (ONNX)."""
        return self.prefill_lengths[0] if self.prefill_lengths else None

    @property
    def cache_shapes(self) -> dict[str, tuple[int, ...]]:
        return contract.cache_shapes(self.cache_layers, self.num_kv_heads, self.cache_lengths, self.head_dim,
                                     self.group_query)

    @property
    def cache_bytes(self) -> int:
        return contract.cache_bytes(self.cache_layers, self.num_kv_heads, self.cache_lengths, self.head_dim)

    @property
    def main_section(self) -> Section:
        return next(s for s in self.sections or [] if s.model_type == MAIN_SECTION)


@dataclasses.dataclass(frozen=True)
class RowStore:
    """A table kept out of the graph and memory-mapped (layout: converters/row_tables.py)."""
    file: str = dataclasses.field(**_meta(path=True))
    offset: int = dataclasses.field(**_meta(min=0))
    shape: list[int] = dataclasses.field(**_meta(min=1, max=1 << 32, length=2))
    dtype: str = dataclasses.field(**_meta(choices=tuple(STORE_DTYPES)))
    scale: float = 1.0
    block: int | None = dataclasses.field(default=None, **_meta(min=1))
    scales_offset: int | None = dataclasses.field(default=None, **_meta(min=0))

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's values (int4: two per byte), scales not included."""
        return self.cols * STORE_DTYPES[self.dtype] // 8

    @property
    def scale_columns(self) -> int:
        """float32 scales per row: one per block of a row (0 for a float table)."""
        return 0 if self.dtype == "float32" else self.cols // (self.block or self.cols)

    @property
    def byte_ranges(self) -> list[tuple[int, int]]:
        """(offset, length) of the codes and of the scales in `file`."""
        ranges = [(self.offset, self.rows * self.row_bytes)]
        if self.scale_columns:
            ranges.append((self.scales_offset, self.rows * self.scale_columns * 4))
        return ranges


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    file: str = dataclasses.field(**_meta(path=True))
    bos_id: int = dataclasses.field(**_meta(min=0))
    add_bos: bool
    stop_ids: list[int] = dataclasses.field(**_meta(min=0))


@dataclasses.dataclass(frozen=True)
class Precision:
    weights: str = dataclasses.field(**_meta(choices=("fp32", "quantized")))
    quantization: str  # the recipe's name
    components: dict = dataclasses.field(default_factory=dict)  # component -> bytes, precisions, counts


@dataclasses.dataclass(frozen=True)
class Model:
    family: str
    architecture: str
    source: str
    config: dict  # the family's config dataclass as a dict (converters/models/<family>.py)

    def setting(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)


@dataclasses.dataclass(frozen=True)
class Audio:
    """Gemma 3n's audio path: the encoder (ONNX: its graph file; .litertlm: the .litertlm, whose
    AUDIO_SECTIONS hold it), the row store of the multimodal vocabularies' embeddings (row r is id
    vocab_offset + r: embed_vision's ids, when the checkpoint has them, then embed_audio's), and how
    a clip goes into a prompt."""
    encoder: str = dataclasses.field(**_meta(path=True))
    vocab_store: str  # a key of row_stores
    soft_tokens: int = dataclasses.field(**_meta(min=1, max=4096))  # per clip
    start_id: int = dataclasses.field(**_meta(min=0))  # <start_of_audio>
    soft_id: int = dataclasses.field(**_meta(min=0))  # <audio_soft_token>
    end_id: int = dataclasses.field(**_meta(min=0))  # <end_of_audio>
    vocab_offset: int = dataclasses.field(**_meta(min=0))
    multimodal_offset: int = dataclasses.field(**_meta(min=0))  # the graph's multimodal ids start here
    features: dict  # the log-mel frontend's settings (runtime/audio.py MelConfig, checked there)


@dataclasses.dataclass(frozen=True)
class BundlePlan:
    """A whole bundle. `files` lists every file with its size and sha256; every other path in the
    plan must be one of them."""
    runtime_format: str = dataclasses.field(**_meta(choices=FORMATS))
    model: Model
    max_context: int = dataclasses.field(**_meta(min=2, max=MAX_CONTEXT))
    graph: Graph
    precision: Precision
    row_stores: dict[str, RowStore]
    tokenizer: Tokenizer
    chat_template: str | None
    files: list[FileEntry]
    created_by: str = "edgepack"
    audio: Audio | None = None

    def to_manifest(self) -> dict:
        """The manifest.json document, keys in the order edgepack has always written them."""
        body = dataclasses.asdict(self)
        if body["graph"]["sections"] is None:
            del body["graph"]["sections"]
        if not body["graph"]["group_query"]:  # as manifests were written before it
            del body["graph"]["group_query"]
        if body["audio"] is None:
            del body["audio"]
        for store in body["row_stores"].values():
            for key in ("block", "scales_offset"):
                if store[key] is None:
                    del store[key]
        order = ("created_by", "runtime_format", "model", "max_context", "graph", "precision", "row_stores",
                 "tokenizer", "chat_template", "audio", "files")
        return {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, **{k: body[k] for k in order if k in body}}

    @classmethod
    def from_manifest(cls, raw: Any, where: str = "manifest.json") -> "BundlePlan":
        if not isinstance(raw, dict):
            raise EdgepackError(f"{where}: not an edgepack manifest (a JSON object is expected)")
        if raw.get("format") != FORMAT_NAME:
            raise EdgepackError(f"{where} is not an edgepack manifest")
        version = raw.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise EdgepackError(f"{where}: bundle schema {version!r}; this edgepack reads {SCHEMA_VERSION}")
        body = {k: v for k, v in raw.items() if k not in ("format", "schema_version")}
        graph = body.get("graph")
        if isinstance(graph, dict) and "cache_lengths" not in graph and isinstance(graph.get("cache_layers"), list):
            # written before sliding-window rings: every cache as long as the context
            body["graph"] = graph | {"cache_lengths": [body.get("max_context")] * len(graph["cache_layers"])}
        plan = _read(cls, body, where)
        plan._check(where)
        return plan

    def _check(self, where: str) -> None:
        """What no single field shows: lengths that go together, paths that must be listed files."""
        g = self.graph
        if len(g.cache_lengths) != len(g.cache_layers):
            raise EdgepackError(f"{where}: graph.cache_lengths has {len(g.cache_lengths)} entries for "
                                f"{len(g.cache_layers)} cache layers")
        if any(n > self.max_context for n in g.cache_lengths) or any(n > self.max_context for n in g.prefill_lengths):
            raise EdgepackError(f"{where}: a cache or prefill length exceeds max_context ({self.max_context})")
        if g.group_query and self.runtime_format != "onnx":
            raise EdgepackError(f"{where}: graph.group_query is for ONNX graphs, not {self.runtime_format}")
        if self.runtime_format == "litertlm" and not g.prefill_lengths:
            raise EdgepackError(f"{where}: graph.prefill_lengths is empty (a .litertlm has prefill_<N> graphs)")
        if self.runtime_format == "litertlm" and not any(s.model_type == MAIN_SECTION for s in g.sections or []):
            raise EdgepackError(f"{where}: graph.sections has no {MAIN_SECTION} section")
        if any(i >= g.vocab_size for i in [self.tokenizer.bos_id, *self.tokenizer.stop_ids]):
            raise EdgepackError(f"{where}: a tokenizer id is outside the vocabulary ({g.vocab_size})")
        listed = {f.path for f in self.files}
        if len(listed) != len(self.files):
            raise EdgepackError(f"{where}: files lists a path twice")
        used = {"graph.file": g.file, "tokenizer.file": self.tokenizer.file}
        used |= {f"row_stores.{name}.file": s.file for name, s in self.row_stores.items()}
        if self.audio is not None:
            used["audio.encoder"] = self.audio.encoder
            self._check_audio(where)
        for field, path in used.items():
            if path not in listed:
                raise EdgepackError(f"{where}: {field} {path!r} is not listed in files (unverifiable)")
        sizes = {f.path: f.size for f in self.files}
        for s in g.sections or []:
            if s.offset + s.size > sizes[g.file]:
                raise EdgepackError(f"{where}: graph.sections: a {s.data_type} section reaches past the end of {g.file}")
        _check_config(self.model.config, where)
        _check_components(self.precision.components, where)
        for name, s in self.row_stores.items():
            if s.dtype != "float32" and (s.block is None or s.scales_offset is None or s.cols % s.block):
                raise EdgepackError(f"{where}: row_stores.{name}: a quantized store needs a block dividing "
                                    f"its {s.cols} columns and a scales_offset")
            ranges = sorted(s.byte_ranges)
            if any(start + n > sizes[s.file] for start, n in ranges):
                raise EdgepackError(f"{where}: row_stores.{name} reaches past the end of {s.file}")
            if len(ranges) == 2 and ranges[0][0] + ranges[0][1] > ranges[1][0]:
                raise EdgepackError(f"{where}: row_stores.{name}: its codes and scales overlap")
            if s.file != g.file and (ranges[0][0] != 0 or sum(n for _, n in ranges) != sizes[s.file]):
                # a store in a file of its own is exactly its codes then its scales (row_tables.py)
                raise EdgepackError(f"{where}: row_stores.{name} does not cover {s.file} as its layout says")

    def _check_audio(self, where: str) -> None:
        a, vocab = self.audio, self.graph.vocab_size
        store = self.row_stores.get(a.vocab_store)
        if store is None:
            raise EdgepackError(f"{where}: audio.vocab_store {a.vocab_store!r} is not one of row_stores")
        if store.dtype != "float32" or store.cols != self.model.setting("hidden_size"):
            raise EdgepackError(f"{where}: audio.vocab_store must be float32 rows of the model's hidden size")
        if any(i >= vocab for i in (a.start_id, a.soft_id, a.end_id, a.multimodal_offset)) \
                or not a.multimodal_offset <= a.vocab_offset <= a.end_id < a.vocab_offset + store.rows:
            raise EdgepackError(f"{where}: audio's token ids are not inside the vocabulary and its audio rows")

    def file_entry(self, path: str) -> FileEntry:
        return next(f for f in self.files if f.path == path)


def _check_config(config: dict, where: str) -> None:
    """The settings of the model's config that readers compute with (the footprint, the runtime)."""
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads"):
        if type(config.get(key)) is not int or not 0 < config[key] < 1 << 20:
            raise EdgepackError(f"{where}: model.config.{key} must be a positive whole number")
    for key in ("altup_num_inputs", "hidden_size_per_layer_input"):
        if key in config and (type(config[key]) is not int or not 0 < config[key] < 1 << 20):
            raise EdgepackError(f"{where}: model.config.{key} must be a positive whole number")
    ffn = config.get("intermediate_size", 0)
    if not all(type(n) is int and 0 <= n < 1 << 24 for n in (ffn if isinstance(ffn, list) else [ffn])) or ffn == []:
        raise EdgepackError(f"{where}: model.config.intermediate_size must be whole numbers")


def _check_components(components: dict, where: str) -> None:
    for name, c in components.items():
        counts = ("bytes", "tensors", "exact", "rounded", "float")
        if not (isinstance(c, dict) and isinstance(c.get("precisions"), list)
                and all(isinstance(p, str) for p in c["precisions"])
                and all(type(c.get(k)) is int and c[k] >= 0 for k in counts)):
            raise EdgepackError(f"{where}: precision.components.{name} is not a component summary")


def component_lines(components: dict) -> list[str]:
    """One line per weight component: precisions, bytes, and how many tensors were transcoded
    exactly from the source grid, re-rounded, or left in float."""
    width = max([len(", ".join(c["precisions"])) for c in components.values()] + [9])
    lines = [f"  {'component':<16} {'precision':<{width}} {'bytes':>12}  exact/rounded/float"]
    for comp, c in components.items():
        lines.append(f"  {comp:<16} {', '.join(c['precisions']):<{width}} {c['bytes'] / 2**20:>8,.1f} MiB  "
                     f"{c['exact']}/{c['rounded']}/{c['float']}")
    return lines


# --- reading typed fields -----------------------------------------------------------------------

def _read(cls, raw: Any, where: str, prefix: str = ""):
    if not isinstance(raw, dict):
        raise EdgepackError(f"{where}: {prefix.rstrip('.') or 'manifest'} must be an object")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise EdgepackError(f"{where}: {name} is missing")
            continue
        values[f.name] = _value(hints[f.name], raw[f.name], where, name, f.metadata)
    return cls(**values)


def _value(kind, v: Any, where: str, name: str, meta) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):  # X | None
        if v is None:
            return None
        kind = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        return _read(kind, v, where, name + ".")
    if origin is list:
        if not isinstance(v, list):
            raise EdgepackError(f"{where}: {name} must be a list")
        if "length" in meta and len(v) != meta["length"]:
            raise EdgepackError(f"{where}: {name} must have {meta['length']} entries")
        return [_value(args[0], x, where, f"{name}[{i}]", meta) for i, x in enumerate(v)]
    if origin is dict or kind is dict:
        if not isinstance(v, dict):
            raise EdgepackError(f"{where}: {name} must be an object")
        return {k: _value(args[1], x, where, f"{name}.{k}", meta) for k, x in v.items()} if args else v
    if kind is bool:
        if type(v) is not bool:
            raise EdgepackError(f"{where}: {name} must be true or false")
        return v
    if kind is int:
        if type(v) is not int:
            raise EdgepackError(f"{where}: {name} must be a whole number")
        if v < meta.get("min", -math.inf) or v > meta.get("max", math.inf):
            raise EdgepackError(f"{where}: {name} = {v} is out of range")
        return v
    if kind is float:
        if type(v) not in (int, float) or not math.isfinite(v):
            raise EdgepackError(f"{where}: {name} must be a finite number")
        return float(v)
    if kind is str:
        if not isinstance(v, str):
            raise EdgepackError(f"{where}: {name} must be a string")
        if "choices" in meta and v not in meta["choices"]:
            raise EdgepackError(f"{where}: {name} {v!r} is not one of {', '.join(meta['choices'])}")
        if meta.get("path"):
            _check_path(v, where, name)
        if "hex" in meta and (len(v) != meta["hex"] or any(c not in "0123456789abcdef" for c in v)):
            raise EdgepackError(f"{where}: {name} must be {meta['hex']} lowercase hex digits")
        return v
    raise TypeError(f"no reader for {kind}")  # a field type this module does not handle: a bug here


def _check_path(path: str, where: str, name: str) -> None:
    """A bundle path is a plain relative name inside the bundle folder: no absolute paths, no
    `..`, no backslashes or control characters, nothing that normalizes to something else."""
    p = PurePosixPath(path)
    if (not path or path.startswith("/") or "\\" in path or any(ord(c) < 32 for c in path)
            or any(part in ("..", ".", "") for part in path.split("/")) or str(p) != path):
        raise EdgepackError(f"{where}: {name} {path!r} is not a plain relative path inside the bundle")
