"""The CompiledModel engine's cache (runtime/litert_cache.py): the main section copied byte for
byte, XNNPACK's packed weights written on the first load and reused after, the same logits as the
model read into memory, a replaced .litertlm copied again, damaged copies and packed weights
found and made again, and a cache that can't be written
falling back to memory with a warning."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from edgepack.bundle import Bundle
from edgepack.runtime.litert_cache import planned_files
from edgepack.runtime.litert_engine import litert_engine
from edgepack.system import LITERT_API_ENV

IDS = np.array([2, 651, 6037, 529, 7001, 563], np.int32)


def decode_logits(folder, cache, monkeypatch) -> np.ndarray:
    monkeypatch.setenv("EDGEPACK_CACHE", str(cache))
    monkeypatch.setenv(LITERT_API_ENV, "compiled")
    engine = litert_engine(Bundle(folder), threads=2)
    engine.reset()
    engine.prefill(IDS[:-1])
    return engine.decode(int(IDS[-1]), len(IDS) - 1).copy()


def stamps(files) -> tuple[int, int]:
    return files.model.stat().st_mtime_ns, files.packed_weights.stat().st_mtime_ns


@pytest.fixture(scope="module")
def in_memory(bundle):
    """Logits of the model read into memory (EDGEPACK_CACHE=off), once."""
    with pytest.MonkeyPatch.context() as mp:
        return decode_logits(bundle("gemma3", "litertlm", "int8"), "off", mp)


def test_cached_section_runs_as_the_model_in_memory(bundle, in_memory, tmp_path, monkeypatch):
    folder = bundle("gemma3", "litertlm", "int8")
    first = decode_logits(folder, tmp_path, monkeypatch)
    b = Bundle(folder)
    files = planned_files(b, tmp_path)
    section = b.main_section
    with open(b.file(b.graph.file), "rb") as f:
        f.seek(section.offset)
        assert files.model.read_bytes() == f.read(section.size)
    assert files.packed_weights.stat().st_size > 0  # XNNPACK wrote its packed weights
    np.testing.assert_allclose(first, in_memory, rtol=0, atol=1e-5)

    before = stamps(files)
    second = decode_logits(folder, tmp_path, monkeypatch)  # mapped from the cache, nothing rewritten
    assert stamps(files) == before
    np.testing.assert_allclose(second, in_memory, rtol=0, atol=1e-5)


def test_replaced_litertlm_is_copied_again(bundle, in_memory, tmp_path, monkeypatch):
    folder = shutil.copytree(bundle("gemma3", "litertlm", "int8"), tmp_path / "bundle")
    decode_logits(folder, tmp_path / "cache", monkeypatch)
    files = planned_files(Bundle(folder), tmp_path / "cache")
    before = stamps(files)
    litertlm = Bundle(folder).file(Bundle(folder).manifest["graph"]["file"])
    os.utime(litertlm, ns=(litertlm.stat().st_atime_ns, litertlm.stat().st_mtime_ns + 10**9))
    again = decode_logits(folder, tmp_path / "cache", monkeypatch)
    assert all(new != old for new, old in zip(stamps(files), before))  # copied and packed anew
    np.testing.assert_allclose(again, in_memory, rtol=0, atol=1e-5)


def test_a_damaged_copy_is_found_and_copied_again(bundle, in_memory, tmp_path, monkeypatch):
    """Every block of the copy is checked against its digest within a few loads (16 random blocks
    a load); half of them zeroed is found at the next one (a miss: 2**-16)."""
    folder = bundle("gemma3", "litertlm", "int8")
    decode_logits(folder, tmp_path, monkeypatch)
    files = planned_files(Bundle(folder), tmp_path)
    raw = bytearray(files.model.read_bytes())
    raw[len(raw) // 4: 3 * len(raw) // 4] = bytes(len(raw) // 2)
    files.model.write_bytes(bytes(raw))
    os.utime(files.model, ns=(0, 0))
    again = decode_logits(folder, tmp_path, monkeypatch)
    b = Bundle(folder)
    with open(b.file(b.graph.file), "rb") as f:
        f.seek(b.main_section.offset)
        assert files.model.read_bytes() == f.read(b.main_section.size)
    np.testing.assert_allclose(again, in_memory, rtol=0, atol=1e-5)


def test_damaged_packed_weights_are_found_and_packed_again(bundle, in_memory, tmp_path, monkeypatch):
    """XNNPACK's packed weights count once stamped after a good load; half of them zeroed is found
    at the next load (16 random MiB blocks checked; a miss: 2**-16), deleted and packed again,
    instead of giving wrong logits; so is a file a failed load left unstamped."""
    folder = bundle("gemma3", "litertlm", "int8")
    decode_logits(folder, tmp_path, monkeypatch)
    files = planned_files(Bundle(folder), tmp_path)
    packed = files.packed_weights.read_bytes()
    stamp = files.packed_weights.with_name(files.packed_weights.name + ".json")
    assert stamp.exists() and len(packed) > 1 << 20
    raw = bytearray(packed)
    raw[len(raw) // 4: 3 * len(raw) // 4] = bytes(len(raw) // 2)
    files.packed_weights.write_bytes(bytes(raw))
    np.testing.assert_allclose(decode_logits(folder, tmp_path, monkeypatch), in_memory, rtol=0, atol=1e-5)
    assert files.packed_weights.read_bytes() != bytes(raw) and stamp.exists()
    stamp.unlink()  # as a load that died while XNNPACK was writing leaves it
    files.packed_weights.write_bytes(bytes(raw))
    np.testing.assert_allclose(decode_logits(folder, tmp_path, monkeypatch), in_memory, rtol=0, atol=1e-5)
    assert stamp.exists()


def test_a_cache_others_can_write_is_not_used(bundle, in_memory, tmp_path, monkeypatch, capfd):
    shared = tmp_path / "shared"
    (shared / "litert").mkdir(parents=True)
    (shared / "litert").chmod(0o777)
    logits = decode_logits(bundle("gemma3", "litertlm", "int8"), shared, monkeypatch)
    assert "writable by another user" in capfd.readouterr().err
    np.testing.assert_allclose(logits, in_memory, rtol=0, atol=1e-5)


def test_unwritable_cache_falls_back_to_memory(bundle, in_memory, tmp_path, monkeypatch, capfd):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    logits = decode_logits(bundle("gemma3", "litertlm", "int8"), blocked, monkeypatch)
    assert "cannot cache the main model" in capfd.readouterr().err
    np.testing.assert_allclose(logits, in_memory, rtol=0, atol=1e-5)
