"""The float TFLite lowering, kept to be reused by the next export of the same model (`edgepack
export --keep-lowered DIR`).

A .litertlm export lowers the float model (litert-torch: the 270M's takes 80-odd seconds and
6 GB) and quantizes the flatbuffer after (tflite_quant.py), so the recipes of one checkpoint at
one context share their lowering; a piecewise export (litertlm_pieces.py) lowers and quantizes a
piece at a time, and shares each float piece the same way. Kept, the next export starts from a
copy of it.

An entry is named by the digest of everything the lowering depends on: the float weights and
buffers, the config, the signatures' shapes, the versions of torch, litert-torch and edgepack and
the converters' own source, so a changed model, option or converter lowers again. Entries are the
user's own folder's business (1.1 GB for the 270M): nothing is kept unless asked for, and
nothing is ever deleted from it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Callable

from edgepack import contract
from edgepack.errors import EdgepackError
from edgepack.system import check_private_folder, lock_exclusive

_CONVERTERS = Path(__file__).parent


@functools.cache
def _toolchain_digest() -> bytes:
    """The versions and source code that decide a graph, read once per process."""
    h = hashlib.sha256()
    for dist in ("torch", "litert-torch", "edgepack"):
        h.update(f"{dist}={metadata.version(dist)};".encode())
    for source in [*sorted(_CONVERTERS.rglob("*.py")), Path(contract.__file__)]:
        h.update(source.name.encode() + source.read_bytes())
    return h.digest()


def lowering_key(module, settings: dict) -> str:
    """The digest of `module`'s tensors, `settings` (JSON-able) and the code that lowers them."""
    import torch

    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(_toolchain_digest())
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def prepare(keep: Path) -> None:
    """The folder made if needed, and refused (one line) unless it is the user's own: what another
    user could write there would be exported as the model."""
    try:
        keep.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private_folder(keep)
    except OSError as e:
        raise EdgepackError(f"--keep-lowered {keep}: {e.strerror or e}") from None


def lower_once(keep: Path | None, module, settings: dict, out: Path, lower: Callable[[Path], None]) -> bool:
    """`out` made by `lower(out)` from `module` as `settings` say, or copied from `keep` where an
    earlier export left the same (True). One process lowers a key at a time; another export of
    the same waits and reuses it."""
    if keep is None:
        lower(out)
        return False
    prepare(keep)
    key = lowering_key(module, settings)
    kept = keep / f"{key}.tflite"
    with open(keep / f".{key}.lock", "w") as lock:
        lock_exclusive(lock)
        if not kept.is_file():
            lower(out)
            tmp = keep / f".{key}.{os.getpid()}"
            shutil.copyfile(out, tmp)
            tmp.replace(kept)
            return False
    shutil.copyfile(kept, out)
    return True
