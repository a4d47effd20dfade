"""The bundle: a folder with `manifest.json` and the files it lists. See docs/bundle-format.md.

Writing is atomic: everything goes into a hidden staging folder beside the target, the manifest
is written last, and only then is the folder renamed into place. A crash leaves a staging folder
that nothing accepts as a bundle (no manifest at the target path).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgepack import contract
from edgepack.errors import EdgepackError

MANIFEST = "manifest.json"
FORMAT_NAME = "edgepack-bundle"
SCHEMA_VERSION = 1
FORMATS = ("litertlm", "onnx")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """The file's sha256, read with drop-behind: hashing a multi-GB bundle must not leave it in
    the page cache, where the kernel keeps it as large folios that a later memory-mapped row
    gather would map whole (megabytes resident per gathered row instead of a page or two)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return h.hexdigest()


def file_entry(folder: Path, name: str, role: str) -> dict:
    p = folder / name
    return {"path": name, "role": role, "size": p.stat().st_size, "sha256": sha256_file(p)}


@contextlib.contextmanager
def staging(target: Path, force: bool = False, complete_when: str = MANIFEST) -> Iterator[Path]:
    """Yields an empty folder; on success it becomes `target`, on any failure it is removed.
    `complete_when` names the file written last (a bundle's manifest, a checkpoint's config)."""
    target = target.resolve()
    if target.exists() and not force:
        raise EdgepackError(f"{target} already exists (use --force to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_stages(target)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    stage.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    try:
        yield stage
        if not (stage / complete_when).exists():
            raise EdgepackError(f"internal error: staged without {complete_when}")
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            stage.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            stage.rename(target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _remove_abandoned_stages(target: Path) -> None:
    """Staging folders of exports that were killed (their process is gone) are garbage."""
    for old in target.parent.glob(f".{target.name}.partial-*"):
        try:
            pid = int(old.name.rsplit(".partial-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except (ValueError, PermissionError):
            continue  # not ours to judge


def write_manifest(folder: Path, manifest: dict) -> None:
    manifest = {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, **manifest}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


class Bundle:
    """A bundle read from disk. `verify()` checks sizes and checksums of every listed file."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        mpath = self.path / MANIFEST
        if self.path.is_file() and self.path.name == MANIFEST:
            self.path, mpath = self.path.parent, self.path
        if not self.path.exists():
            raise EdgepackError(f"bundle not found: {self.path}")
        if not mpath.exists():
            raise EdgepackError(f"{self.path} is not an edgepack bundle: no {MANIFEST}")
        try:
            self.manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EdgepackError(f"{mpath} is corrupt: {e}") from None
        m = self.manifest
        if m.get("format") != FORMAT_NAME:
            raise EdgepackError(f"{mpath} is not an edgepack manifest")
        if m.get("schema_version") != SCHEMA_VERSION:
            raise EdgepackError(
                f"{self.path} has bundle schema {m.get('schema_version')}; this edgepack reads {SCHEMA_VERSION}"
            )
        if m.get("runtime_format") not in FORMATS:
            raise EdgepackError(f"{mpath}: unknown runtime_format {m.get('runtime_format')!r}")

    def file(self, name: str) -> Path:
        return self.path / name

    def verify(self, checksums: bool = True) -> None:
        for entry in self.manifest["files"]:
            p = self.path / entry["path"]
            if not p.exists():
                raise EdgepackError(f"bundle file missing: {p}")
            size = p.stat().st_size
            if size != entry["size"]:
                raise EdgepackError(f"bundle file {p} is {size} bytes, manifest says {entry['size']} (truncated?)")
            if checksums and sha256_file(p) != entry["sha256"]:
                raise EdgepackError(f"bundle file {p} fails its sha256 check (altered or corrupt)")

    @property
    def format(self) -> str:
        return self.manifest["runtime_format"]

    @property
    def max_context(self) -> int:
        return int(self.manifest["max_context"])

    @property
    def cache_lengths(self) -> list[int]:
        """Slots of each cache layer: sliding-window layers may keep a ring shorter than the
        context (contract.cache_lengths). Bundles written before rings list no lengths: their
        caches are all as long as the context."""
        g = self.manifest["graph"]
        return g.get("cache_lengths") or [self.max_context] * len(g["cache_layers"])

    @property
    def cache_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every KV cache tensor the graph reads, with its shape."""
        g = self.manifest["graph"]
        return contract.cache_shapes(g["cache_layers"], int(g["num_kv_heads"]), self.cache_lengths, int(g["head_dim"]))

    @property
    def cache_bytes(self) -> int:
        g = self.manifest["graph"]
        return contract.cache_bytes(g["cache_layers"], int(g["num_kv_heads"]), self.cache_lengths, int(g["head_dim"]))

    @property
    def graph_bytes(self) -> int:
        """Bytes of the prefill/decode graph: every weight a decode step reads (the LM head
        included), but not the row stores kept outside it."""
        if self.format == "onnx":
            return sum(f["size"] for f in self.manifest["files"] if f["role"] in ("graph", "weights"))
        return self.main_section["size"]

    @property
    def main_section(self) -> dict:
        """A .litertlm's prefill/decode model: its section entry (offset, size) in the manifest."""
        return next(s for s in self.manifest["graph"]["sections"] if s["model_type"] == "tf_lite_prefill_decode")
