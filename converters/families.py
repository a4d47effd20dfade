"""The model families edgepack converts. Adding one is writing its model file (a config dataclass,
the graph, and a `FAMILY` descriptor: converters/models/family.py) and listing it here."""

from __future__ import annotations

from edgepack.converters.models import gemma3, gemma3n
from edgepack.converters.models.family import Family
from edgepack.errors import EdgepackError

FAMILIES: dict[str, Family] = {f.name: f for f in (gemma3n.FAMILY, gemma3.FAMILY)}
ARCHITECTURES: dict[str, Family] = {arch: f for f in FAMILIES.values() for arch in f.architectures}


def for_architecture(architecture: str) -> Family:
    if architecture not in ARCHITECTURES:
        raise EdgepackError(f"unsupported architecture {architecture!r}; edgepack supports {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture]


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise EdgepackError(f"unknown model family {name!r}; edgepack knows {', '.join(FAMILIES)}")
    return FAMILIES[name]
