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
import stat
import tempfile
import zlib
from pathlib import Path
from typing import Iterator

from edgepack.errors import EdgepackError
from edgepack.plan import FORMAT_NAME, BundlePlan, FileEntry, Graph, Section

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20  # a full-size Gemma 3n manifest is about 30 KB


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


def file_entry(folder: Path, name: str, role: str) -> FileEntry:
    p = folder / name
    return FileEntry(name, role, p.stat().st_size, sha256_file(p))


def check_replaceable(target: Path, force: bool, source: Path | None = None) -> None:
    """Refuses, before any work is done, to write where it must not: an existing target without
    `force`; with it, anything but an edgepack bundle (a manifest and only the files it lists),
    the source being read, or a folder holding it."""
    if not (target.exists() or target.is_symlink()):
        parent = target.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise EdgepackError(f"cannot write {target}: {parent} is not a writable folder")
        return
    if not force:
        raise EdgepackError(f"{target} already exists (use --force to replace it)")
    real = target.resolve()
    if source is not None and source.exists() and source.resolve().is_relative_to(real):
        raise EdgepackError(f"refusing to replace {target}: the source being exported is in it")
    try:
        raw = json.loads(_read_regular(real / MANIFEST, MAX_MANIFEST_BYTES))
        listed = {f["path"].split("/")[0] for f in raw["files"]} | {MANIFEST, MANIFEST + ".sig"}
        ours = raw["format"] == FORMAT_NAME and {p.name for p in real.iterdir()} <= listed
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EdgepackError):
        ours = False
    if not ours or target.is_symlink():
        raise EdgepackError(f"refusing to replace {target} with --force: it is not an edgepack bundle "
                            "(only a folder holding a bundle's manifest and listed files is replaced)")


@contextlib.contextmanager
def staging(target: Path, force: bool = False, complete_when: str = MANIFEST) -> Iterator[Path]:
    """Yields an empty folder; on success it becomes `target`, on any failure it is removed.
    `complete_when` names the file written last (a bundle's manifest, a checkpoint's config)."""
    target = target.resolve()
    if target.exists() and not force:
        raise EdgepackError(f"{target} already exists (use --force to replace it)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_stages(target)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    except OSError as e:
        raise EdgepackError(f"cannot write {target}: {e.strerror or e}") from None
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


def write_manifest(folder: Path, plan: BundlePlan) -> None:
    (folder / MANIFEST).write_text(json.dumps(plan.to_manifest(), indent=2) + "\n")


class Bundle:
    """A bundle read from disk: `plan` is its manifest, validated (edgepack/plan.py); `manifest` the
    same document as parsed JSON. Every file the runtime opens is one of `plan.files`, reached
    through `file()`, which keeps it inside the folder. `verify()` checks their sizes and sha256."""

    def __init__(self, path: str | Path, trusted_keys: list | None = None):
        """`trusted_keys` (public key files, or raw 32-byte Ed25519 keys): the bundle must carry a
        signature by one of them (edgepack/signing.py), checked before the manifest is parsed."""
        self.path = Path(path).expanduser()
        mpath = self.path / MANIFEST
        if self.path.name == MANIFEST and self.path.is_file():
            self.path, mpath = self.path.parent, self.path
        if not self.path.exists():
            raise EdgepackError(f"bundle not found: {self.path}")
        if not mpath.exists():
            raise EdgepackError(f"{self.path} is not an edgepack bundle: no {MANIFEST}")
        if not mpath.is_file():
            raise EdgepackError(f"{mpath} is not a file")
        raw = _read_regular(mpath, MAX_MANIFEST_BYTES)
        if trusted_keys:
            from edgepack import signing

            keys = [k if isinstance(k, bytes) else signing.load_public_key(Path(k)) for k in trusted_keys]
            signing.verify(raw, mpath.with_name(mpath.name + signing.SIGNATURE_SUFFIX), keys)
        try:
            self.manifest = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise EdgepackError(f"{mpath} is corrupt: {e}") from None
        self.plan = BundlePlan.from_manifest(self.manifest, str(mpath))

    def file(self, name: str) -> Path:
        """A listed file's path, checked to stay inside the bundle once symlinks are resolved and to
        be a regular file (not a FIFO or a device that would hang or feed a read forever)."""
        if name not in {f.path for f in self.plan.files}:
            raise EdgepackError(f"{self.path}: {name!r} is not one of the bundle's listed files")
        p = self.path / name
        try:
            real, root = p.resolve(strict=True), self.path.resolve(strict=True)
        except FileNotFoundError:
            raise EdgepackError(f"bundle file missing: {p}") from None
        except (OSError, RuntimeError) as e:  # a symlink loop
            raise EdgepackError(f"bundle file {p} cannot be resolved: {e}") from None
        if not real.is_relative_to(root):
            raise EdgepackError(f"bundle file {p} points outside the bundle (to {real})")
        if not stat.S_ISREG(real.stat().st_mode):
            raise EdgepackError(f"bundle file {p} is not a regular file")
        return p

    def verify(self, checksums: bool = True) -> None:
        for entry in self.plan.files:
            p = self.file(entry.path)
            size = p.stat().st_size
            if size != entry.size:
                raise EdgepackError(f"bundle file {p} is {size} bytes, manifest says {entry.size} (truncated?)")
            if checksums and sha256_file(p) != entry.sha256:
                raise EdgepackError(f"bundle file {p} fails its sha256 check (altered or corrupt)")
        if checksums and self.format == "litertlm":
            self._check_embedded_tokenizer()

    def _check_embedded_tokenizer(self) -> None:
        """LiteRT-LM reads the tokenizer inside the .litertlm, edgepack's runtime tokenizer.json:
        both must be the same bytes, or the two engines would read other tokens from one bundle."""
        section = next((s for s in self.graph.sections or [] if s.data_type == "HF_Tokenizer_Zlib"), None)
        if section is None:
            raise EdgepackError(f"{self.path}: the .litertlm has no HF_Tokenizer_Zlib section")
        ours = self.file(self.plan.tokenizer.file).read_bytes()
        blob = self.read_section(section)
        inflate = zlib.decompressobj()
        try:  # 8 bytes of uncompressed size, then zlib; never inflated past tokenizer.json's size
            theirs = inflate.decompress(blob[8:], len(ours) + 1)
        except zlib.error:
            theirs = None
        if int.from_bytes(blob[:8], "little") != len(ours) or theirs != ours:
            raise EdgepackError(f"{self.path}: the tokenizer inside {self.graph.file} is not "
                                f"{self.plan.tokenizer.file} (LiteRT-LM and edgepack would tokenize differently)")

    @property
    def format(self) -> str:
        return self.plan.runtime_format

    @property
    def max_context(self) -> int:
        return self.plan.max_context

    @property
    def graph(self) -> Graph:
        return self.plan.graph

    @property
    def cache_lengths(self) -> list[int]:
        """Slots of each cache layer: sliding-window layers may keep a ring shorter than the
        context (contract.cache_lengths)."""
        return self.plan.graph.cache_lengths

    @property
    def cache_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every KV cache tensor the graph reads, with its shape."""
        return self.plan.graph.cache_shapes

    @property
    def cache_bytes(self) -> int:
        return self.plan.graph.cache_bytes

    @property
    def graph_bytes(self) -> int:
        """Bytes of the prefill/decode graph: every weight a decode step reads (the LM head
        included), but not the row stores kept outside it."""
        if self.format == "onnx":
            return sum(f.size for f in self.plan.files if f.role in ("graph", "weights"))
        return self.main_section.size

    def read_section(self, section: Section) -> bytes:
        """A .litertlm section's bytes, read from the graph file."""
        with open(self.file(self.graph.file), "rb") as f:
            f.seek(section.offset)
            return f.read(section.size)

    @property
    def main_section(self) -> Section:
        """A .litertlm's prefill/decode model: its section (offset, size) in the file."""
        return self.plan.graph.main_section


def _read_regular(path: Path, limit: int) -> bytes:
    """A regular file's bytes, refusing anything larger than `limit`."""
    with open(path, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise EdgepackError(f"{path} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise EdgepackError(f"{path} is over {limit >> 20} MiB: not a manifest edgepack wrote")
    return data
