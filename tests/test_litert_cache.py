"""The CompiledModel engine's cache (runtime/litert_cache.py): the main section copied byte for
byte, XNNPACK's packed weights written on the first load and reused after, the same logits as the
model read into memory, a replaced .litertlm copied again, and a cache that can't be written
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
    with open(b.file(b.manifest["graph"]["file"]), "rb") as f:
        f.seek(section["offset"])
        assert files.model.read_bytes() == f.read(section["size"])
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


def test_unwritable_cache_falls_back_to_memory(bundle, in_memory, tmp_path, monkeypatch, capfd):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    logits = decode_logits(bundle("gemma3", "litertlm", "int8"), blocked, monkeypatch)
    assert "cannot cache the main model" in capfd.readouterr().err
    np.testing.assert_allclose(logits, in_memory, rtol=0, atol=1e-5)
