"""The Android demo's Kotlin core (android_demo/core) against the Python side it mirrors, on
bundles the Python exporter wrote: it verifies exactly the bundles `edgepack inspect` verifies and
refuses the same damaged copies in the same words, validates manifests field for field as
edgepack/plan.py does, predicts the same memory footprint (edgepack/footprint.py) for every engine
and every device in edgepack/devices.json, and writes WAV files Python's `wave` module and the runtime's reader read back
sample for sample. The core's own JUnit tests run in `android_demo/test-core`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from edgepack.runtime import audio
from hostile_inputs import HOSTILE, cli, manifest_places, mutate

ROOT = Path(__file__).resolve().parents[1]
# Values the two sides take apart on purpose: NaN is not JSON (Python's reader takes it, the core's
# refuses the document), and the core's integers end at 2^63 - 1 (no bundle has an 8 EiB file).
DIFFERENT_ON_PURPOSE = [v for v in HOSTILE if isinstance(v, float) and v != v or v == 2**63]


@pytest.fixture(scope="session")
def core_jar() -> str:
    """android_demo/core compiled (kotlinc from npm, installed on first use) into a runnable jar."""
    proc = subprocess.run([str(ROOT / "android_demo" / "test-core"), "--jar-only"], capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def kotlin(jar: str, *args: str) -> list[dict]:
    proc = subprocess.run(["java", "-jar", jar, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def inspect_error(folder: Path) -> str | None:
    """`edgepack inspect FOLDER`'s one-line error, or None when it verifies the bundle."""
    code, out, err = cli("inspect", str(folder))
    if code == 0:
        assert "checksums verified" in out, out
        return None
    assert code == 2, err[-2000:]
    return err.strip().splitlines()[-1].removeprefix("edgepack: error: ")


def damaged_copies(bundle: Path, root: Path) -> list[Path]:
    """The bundle and copies of it with one thing wrong each. Files a copy leaves alone are hard
    links (a full-size bundle is not copied five times)."""
    files = json.loads((bundle / "manifest.json").read_text())["files"]
    largest = max(files, key=lambda f: f["size"])["path"]

    def variant(name: str, change) -> Path:
        out = root / f"{bundle.name}-{name}"
        shutil.copytree(bundle, out, copy_function=os.link)
        change(out)
        return out

    def rewrite(path: Path, edit) -> None:
        data = bytearray(path.read_bytes())
        path.unlink()  # a hard link: the original must not change
        path.write_bytes(edit(data))

    def flip(data: bytearray) -> bytes:
        data[len(data) // 2] ^= 0x40
        return bytes(data)

    def schema(folder: Path) -> None:
        m = json.loads((folder / "manifest.json").read_text())
        m["schema_version"] = 2
        (folder / "manifest.json").unlink()
        (folder / "manifest.json").write_text(json.dumps(m))

    def tokenizer(folder: Path) -> None:  # listed with its new digest: only the embedded copy disagrees
        m = json.loads((folder / "manifest.json").read_text())
        rewrite(folder / "tokenizer.json", lambda d: bytes(d) + b" ")
        entry = next(f for f in m["files"] if f["path"] == "tokenizer.json")
        entry["size"] += 1
        entry["sha256"] = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
        (folder / "manifest.json").unlink()
        (folder / "manifest.json").write_text(json.dumps(m))

    copies = [bundle,
              variant("missing", lambda f: (f / "tokenizer.json").unlink()),
              variant("truncated", lambda f: rewrite(f / largest, lambda d: bytes(d[:-1]))),
              variant("altered", lambda f: rewrite(f / largest, flip)),
              variant("schema", schema)]
    if json.loads((bundle / "manifest.json").read_text())["runtime_format"] == "litertlm":
        copies.append(variant("tokenizer", tokenizer))
    return copies


@pytest.mark.parametrize("which", ["gemma3n_multimodal-litertlm", "gemma3-onnx", "270m-litertlm-int4"])
def test_kotlin_verifies_exactly_what_inspect_verifies(which, core_jar, bundle, bundle_270m, tmp_path):
    source = bundle_270m("litertlm", "int4") if which.startswith("270m") else bundle(*which.split("-"))
    copies = damaged_copies(source, tmp_path)
    python = [inspect_error(c) for c in copies]
    theirs = kotlin(core_jar, "verify", *map(str, copies))
    assert python[0] is None and all(python[1:]), python  # the original verifies, every damaged copy fails
    assert [None if r["ok"] else r["error"] for r in theirs] == python


@pytest.mark.parametrize("which", ["gemma3n_multimodal-litertlm", "gemma3-onnx"])
def test_kotlin_validates_manifests_as_plan_py_does(which, core_jar, bundle, tmp_path):
    """Every place in the manifest, deleted or given each hostile value: the same verdict and the
    same one-line message from both readers."""
    from edgepack.errors import EdgepackError
    from edgepack.plan import BundlePlan

    original = json.loads((bundle(*which.split("-")) / "manifest.json").read_text())
    cases = [(path, "delete", None) for path, _ in manifest_places(original) if path]
    cases += [(path, "replace", v) for path, _ in manifest_places(original) for v in HOSTILE
              if not any(v is d for d in DIFFERENT_ON_PURPOSE)]
    files, python = [], []
    for i, (path, how, value) in enumerate(cases):
        doc = mutate(json.loads(json.dumps(original)), path, how, value)
        f = tmp_path / f"{i}.json"
        f.write_text(json.dumps(doc))
        files.append(str(f))
        try:
            BundlePlan.from_manifest(json.loads(f.read_text()), str(f))
            python.append(None)
        except EdgepackError as e:
            python.append(str(e))
    theirs = [None if r["ok"] else r["error"] for r in kotlin(core_jar, "manifest", *files)]
    differ = [(cases[i][:2], repr(cases[i][2])[:40], p, k) for i, (p, k) in enumerate(zip(python, theirs)) if p != k]
    assert not differ, f"{len(differ)} of {len(cases)} differ, e.g. {differ[:3]}"
    assert sum(p is not None for p in python) > len(cases) // 2  # most mutations are refused: the test has teeth


@pytest.mark.parametrize("which", ["gemma3n_multimodal-litertlm", "gemma3-onnx", "270m-litertlm-int4", "270m-onnx-int4"])
def test_memory_verdict_equals_footprint_py(which, core_jar, bundle, bundle_270m, tmp_path, monkeypatch):
    from edgepack import footprint
    from edgepack.bundle import Bundle

    # the real boards and one too small for any bundle, so that both verdicts are compared
    boards = json.loads(footprint.DEVICES_FILE.read_text())
    boards["devices"]["board-of-128-mib"] = {"ram_mib": 128, "os_reserve_mib": 0, "cpu": "Cortex-A53",
                                             "lse_atomics": False}
    (tmp_path / "devices.json").write_text(json.dumps(boards))
    monkeypatch.setattr(footprint, "DEVICES_FILE", tmp_path / "devices.json")
    folder = bundle_270m(*which.split("-")[1:]) if which.startswith("270m") else bundle(*which.split("-"))
    theirs = kotlin(core_jar, "verdict", str(folder), str(footprint.DEVICES_FILE))
    b = Bundle(folder)
    assert len(theirs) == len(footprint.WEIGHT_COPIES) * len(footprint.devices())
    for row in theirs:
        ours = footprint.predict(b, engine=row["engine"])
        budget = footprint.device_budget(row["device"])
        assert row["parts"] == ours.parts and row["parse_peak"] == ours.parse_peak and row["peak"] == ours.peak, row
        assert row["lines"] == ours.lines()
        assert (row["budget"], row["fits"]) == (budget, ours.peak <= budget), row  # check_fits refuses peak > budget
    assert {r["fits"] for r in theirs} == {True, False}


def test_wav_reads_back_in_pythons_wave_module(core_jar, tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.6, 16_000), [0, 1, -1, 0.5, -0.5, 1.5, -3, 1 / 32767, -0.49999997 / 32767]])
    x = x.astype("<f4")
    (tmp_path / "in.f32").write_bytes(x.tobytes())
    kotlin(core_jar, "wav", str(tmp_path / "in.f32"), str(tmp_path / "out.wav"))
    with wave.open(str(tmp_path / "out.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16_000, len(x))
        got = np.frombuffer(w.readframes(len(x)), "<i2")
    v = np.clip(x, -1, 1) * np.float32(32767)  # float32 throughout, as the core computes it
    want = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype("<i2")
    assert np.array_equal(got, want)
    assert got[16_000:16_007].tolist() == [0, 32767, -32767, 16384, -16384, 32767, -32767]
    samples, rate = audio.read_wav(tmp_path / "out.wav")  # the runtime's reader, as a clip goes to the encoder
    assert rate == 16_000 and np.array_equal(samples, want / np.float32(32768))
