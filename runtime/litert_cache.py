"""The `.litertlm` main model as a file LiteRT maps, with XNNPACK's packed weights beside it.

ai-edge-litert's Python binding loads a model from `bytes` or from a file of its own; the main
(prefill/decode) model is a section inside model.litertlm. Read into `bytes`, it stays resident as
anonymous memory (1.6 GB for E2B int4) beside the copy XNNPACK packs the weights into. Instead:
- the section is copied once into a cache folder as a file of its own, which LiteRT maps
  (`os.copy_file_range`: a filesystem that can share blocks does, so the copy may cost no disk);
- XNNPACK's weight cache lives beside it: the first load packs the weights into that file, later
  loads map them from it and read almost none of the original (E2B, the engine alone: loaded in
  1.7 s instead of 13);
- after a load the original's pages are paged out (mapped_pages.page_out); what a CPU kernel
  still reads in place faults back in.
E2B int4, the engine after load and one decode step: 4,022 MiB resident from bytes, 1,921 MiB
this way (docs/full-size.md has whole runs).
The cost is disk: the section again (unless shared) and the packed weights (about its size), as
LiteRT-LM pays for the XNNPACK cache it keeps next to a model.

Folder: `$EDGEPACK_CACHE/litert/<sha256 of the .litertlm>-<section offset>-<ai-edge-litert
version>` (EDGEPACK_CACHE defaults to ~/.cache/edgepack). A stamp records the source's size and
mtime, so a replaced .litertlm is copied again and its packed weights rebuilt, and the digest of
every MiB of the copy, 16 of which are checked at every load (a damaged copy is copied again);
the packed weights get the same stamp after the load that wrote them, and the same check.
The folders must be the user's own and writable by nobody else, and a copy is only made with room
for it and the packed weights. EDGEPACK_CACHE=off, or a folder that can't be used, loads from
bytes as before (with a warning).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterator

from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError
from edgepack.system import CACHE_ENV, cache_root, check_private_folder, litert_api, lock_exclusive

COPY_BLOCK, READ_BLOCK = 1 << 30, 16 << 20
# XNNPACK's delegate flags (tflite/delegates/xnnpack/xnnpack_delegate.h): QS8 | QU8 (LiteRT's
# default) and DYNAMIC_FULLY_CONNECTED, which lets XNNPACK run the fully-connected ops whose weights
# are not constants (attention's products with the cache) and the dynamic-range int8/int4 ones with
# its own kernels; without it they fall back to TFLite's builtin kernels. The 270M int4, 512-token
# prompt, 2 threads: prefill 498 -> 1,333 tok/s, decode 60 -> 82; perplexity on GPL-3 17.16 ->
# 17.15 (int8: 16.22 -> 16.25) (benchmarks/litert_flags.py, docs/benchmarks.md). The packed weights
# depend on the flags: they name the file.
XNNPACK_FLAGS = 0x1 | 0x2 | 0x8
BLOCK, SAMPLED_BLOCKS = 1 << 20, 16  # the cached copy's check: digests per MiB, 16 checked per load
# One token through the engine: XNNPACK packs the weights when a signature first runs.
_WARM_UP = """
import sys
from edgepack.runtime import Generator
gen = Generator(sys.argv[1], memory_check=False, verify=False)
list(gen.generate_ids([gen.bos_id], 1))
"""


@dataclasses.dataclass(frozen=True)
class MainModelFiles:
    model: Path  # the main section, a file of its own
    packed_weights: Path  # XNNPACK's weight cache for it


def planned_files(b: Bundle, root: Path | None = None) -> MainModelFiles | None:
    """Where the bundle's main model and packed weights are (or will be) cached: under `root`,
    by default this process's cache_root()."""
    root = root or cache_root()
    if root is None:
        return None
    sha = b.plan.file_entry(b.graph.file).sha256  # 64 hex digits, checked when the manifest was read
    folder = root / "litert" / f"{sha[:24]}-{b.main_section.offset}-{metadata.version('ai-edge-litert')}"
    return MainModelFiles(folder / "main.tflite", folder / f"main.xnnpack-{XNNPACK_FLAGS:x}")


@contextlib.contextmanager
def cached_main_model(b: Bundle) -> Iterator[MainModelFiles | None]:
    """Yields the cached files, copied first if missing, stale or failing their check, with the
    folder locked while the caller loads (the first load writes the packed weights); None if no
    cache can be kept (the caller reads the model into memory)."""
    files = planned_files(b)
    if files is None:
        yield None
        return
    folder = files.model.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private_folder(folder)
        lock = open(folder / ".lock", "w")
    except OSError as e:
        _warn(f"cannot cache the main model in {folder} ({e.strerror})")
        yield None
        return
    with lock:
        lock_exclusive(lock)
        try:
            _refresh(b, files)
            _check_packed(files)
        except OSError as e:
            _warn(f"cannot cache the main model in {folder} ({e.strerror})")
            yield None
            return
        yield files
        with contextlib.suppress(OSError):  # the load went well: XNNPACK has written the packed weights
            _stamp_packed(files)


def used_by(b: Bundle, env: dict | None = None) -> MainModelFiles | None:
    """The cached files a process with `env` (default: this one's) would load `b` from, if any."""
    env = os.environ if env is None else env
    if b.format != "litertlm" or litert_api(env) != "compiled":
        return None
    root = cache_root(env)
    return None if root is None else planned_files(b, root)


def warm_up(b: Bundle, env: dict | None = None) -> bool:
    """Builds the cache in a child process (with `env`) if the bundle's packed weights aren't in it
    yet: the first load packs them and peaks higher (E2B int4: 2.5 GB against 2.0 for the loads
    after it), so a measurement of the loads a user repeats comes after it. True if it ran."""
    files = used_by(b, env)
    if files is None or _packed_stamp(files).exists():
        return False
    proc = subprocess.run([sys.executable, "-c", _WARM_UP, str(b.path)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EdgepackError(f"the first load of {b.path} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return True


def _refresh(b: Bundle, files: MainModelFiles) -> None:
    """Copies the section unless the cached copy came from this very file (size and mtime) and
    passes its check: SAMPLED_BLOCKS blocks, picked anew at every load, against the digests of
    every block taken when it was copied (a damaged or replaced copy is found in a few loads at
    most; about 16 MiB read, ~10 ms). Refuses (OSError) without room for the copy and the packed
    weights, rather than let XNNPACK run out of disk half-way through packing."""
    source = b.file(b.graph.file)
    st = source.stat()
    stamp_path = files.model.with_suffix(".source.json")
    stamp = {"source": str(source.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        recorded = json.loads(stamp_path.read_text())
        if ({k: recorded[k] for k in stamp} == stamp and files.model.exists()
                and _sample_ok(files.model, recorded, b.main_section.size)):
            return
    files.packed_weights.unlink(missing_ok=True)  # packed from the old copy
    _packed_stamp(files).unlink(missing_ok=True)
    section = b.main_section
    free = shutil.disk_usage(files.model.parent).free
    if free < 2 * section.size + (64 << 20):  # the copy, then about as much again of packed weights
        raise OSError(errno.ENOSPC, f"{free >> 20} MiB free, {2 * section.size >> 20} MiB needed")
    partial = files.model.with_name(f".{files.model.name}.{os.getpid()}.partial")
    try:
        with open(source, "rb") as src, open(partial, "wb") as dst:
            _copy_range(src, dst, section.offset, section.size)
        stamp["blocks"] = _block_digests(partial)
        os.replace(partial, files.model)
    finally:
        partial.unlink(missing_ok=True)
    tmp = stamp_path.with_name(f".{stamp_path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(stamp))
    os.replace(tmp, stamp_path)


def _packed_stamp(files: MainModelFiles) -> Path:
    return files.packed_weights.with_name(files.packed_weights.name + ".json")


def _check_packed(files: MainModelFiles) -> None:
    """XNNPACK writes the packed weights itself, whole, while a CompiledModel loads (measured: the
    file does not change after the load). They count only once stamped after a load that went
    well, with a digest per MiB, and SAMPLED_BLOCKS of them are checked before each load: packed
    weights left half-written by a failed load, or damaged since, are deleted, and this load packs
    them again."""
    stamp = _packed_stamp(files)
    if not files.packed_weights.exists():
        stamp.unlink(missing_ok=True)
        return
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        recorded = json.loads(stamp.read_text())
        if _sample_ok(files.packed_weights, recorded, recorded["size"]):
            return
    files.packed_weights.unlink()
    stamp.unlink(missing_ok=True)


def _stamp_packed(files: MainModelFiles) -> None:
    stamp = _packed_stamp(files)
    if stamp.exists() or not files.packed_weights.exists():
        return
    record = {"size": files.packed_weights.stat().st_size, "blocks": _block_digests(files.packed_weights)}
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, stamp)


def _block_digests(path: Path) -> list[str]:
    """sha256 of every BLOCK bytes of a file (the last block may be shorter)."""
    out = []
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            out.append(hashlib.sha256(chunk).hexdigest())
    return out


def _sample_ok(path: Path, recorded: dict, size: int) -> bool:
    """The copy is `size` bytes and SAMPLED_BLOCKS random blocks of it match their digests."""
    blocks = recorded["blocks"]
    if path.stat().st_size != size or len(blocks) != -(-size // BLOCK):
        return False
    with open(path, "rb") as f:
        for i in random.sample(range(len(blocks)), min(SAMPLED_BLOCKS, len(blocks))):
            f.seek(i * BLOCK)
            if hashlib.sha256(f.read(BLOCK)).hexdigest() != blocks[i]:
                return False
    return True


def _copy_range(src, dst, offset: int, size: int) -> None:
    """In-kernel where it can (copy_file_range: old kernels refuse across filesystems, qemu-user
    may not have it), else through a buffer."""
    end, in_kernel = offset + size, hasattr(os, "copy_file_range")
    while offset < end:
        count = min(COPY_BLOCK if in_kernel else READ_BLOCK, end - offset)
        try:
            n = os.copy_file_range(src.fileno(), dst.fileno(), count, offset) if in_kernel else None
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            in_kernel, n = False, None
        if n is None:
            n = dst.write(os.pread(src.fileno(), count, offset))
        if n == 0:
            raise OSError(0, f"{src.name} ends inside its main section")
        offset += n


def _warn(what: str) -> None:
    print(f"edgepack: {what}; reading it into memory instead (set {CACHE_ENV} to a writable folder)",
          file=sys.stderr)
