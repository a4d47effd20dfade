"""The memory check: the predicted peak against a real process's measured peak, the budget read
from a real cgroup limit, and a refusal before loading (exit 2, the breakdown on stderr)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError
from edgepack.footprint import device_budget, predict

MEASURE = """
import json, sys
from edgepack.footprint import peak_rss
from edgepack.runtime import Generator
gen = Generator(sys.argv[1])
list(gen.generate_ids(gen.encode("Once upon a time, in a land far away"), 8))
print(json.dumps({"peak": peak_rss(), "engine": type(gen.engine).__name__}))
"""


@pytest.mark.parametrize("api", ["compiled", "interpreter", None])
@pytest.mark.parametrize("name", ["gemma3n_multimodal", "gemma3"])
def test_predicted_peak_matches_measured(name, api, bundle, monkeypatch):
    """A separate process loads the bundle and generates; its peak RSS (the kernel's high-water
    mark) is within 15% of the prediction made from the manifest alone."""
    from edgepack.system import LITERT_API_ENV

    folder = bundle(name, "onnx" if api is None else "litertlm")
    if api:
        monkeypatch.setenv(LITERT_API_ENV, api)
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(folder)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    fp = predict(Bundle(folder))
    assert fp.engine == (api or "onnx")
    assert abs(fp.peak / measured["peak"] - 1) < 0.15, (fp.as_dict(), measured)


@pytest.mark.parametrize("fmt,quant,api", [
    ("onnx", "int4", None),  # the 270M's ONNX int8 and int4 are one bundle (conftest.bundle_270m)
    ("litertlm", "int8", "compiled"), ("litertlm", "int8", "interpreter"),
    ("litertlm", "int4", "compiled"), ("litertlm", "int4", "interpreter"),
])
def test_predicted_peak_matches_measured_where_weights_dominate(fmt, quant, api, bundle_270m):
    """The tiny bundles above peak while the tokenizer parses; the real 270M's quantized bundles
    peak on their weights (the largest part, past the parse), so these check the engines' weight
    factors. None of these bundles was used to fit a constant (docs/memory-predictions.md).
    `edgepack profile`'s measured run: a fresh process, after the loads that pack LiteRT's cache."""
    from edgepack.profile import measure

    b = Bundle(bundle_270m(fmt, quant))
    fp = predict(b, api or "onnx")
    assert max(fp.parts, key=fp.parts.get) == "weights" and sum(fp.parts.values()) > fp.parse_peak, fp.as_dict()
    measured = measure(b.path, 16, 16, fp.engine)["peak_rss"]
    assert abs(fp.peak / measured - 1) < 0.15, (fp.as_dict(), measured)


def _in_cgroup(limit: int, args: list[str]) -> subprocess.CompletedProcess:
    from device_tests.targets import MemoryCgroup, Unavailable  # the repo root is on sys.path (./conftest.py)

    try:
        with MemoryCgroup(limit) as cg:
            return subprocess.run(cg.wrap(args), capture_output=True, text=True, timeout=600)
    except Unavailable as e:
        pytest.fail(f"this machine can't make memory cgroups (CI and the dev machines can): {e}")


def test_budget_is_the_cgroup_limit():
    limit = 700 << 20
    proc = _in_cgroup(limit, [sys.executable, "-c",
                              "from edgepack.footprint import memory_budget; print(memory_budget()[0])"])
    assert proc.returncode == 0, proc.stderr
    assert abs(int(proc.stdout.strip()) - limit) < 4096  # the kernel rounds the limit to pages


def test_run_refuses_a_bundle_over_the_budget_before_loading(bundle):
    folder = bundle("gemma3", "onnx")
    need = predict(Bundle(folder)).peak
    proc = _in_cgroup(need // 2, [sys.executable, "-m", "edgepack.cli", "run", str(folder), "--prompt", "Hi"])
    assert proc.returncode == 2, proc.stderr
    assert "refusing to load it" in proc.stderr and "cgroup limit" in proc.stderr
    assert proc.stdout == ""


def test_unknown_device_is_refused():
    assert device_budget("pi4-2gb") == (2048 - 300) << 20
    with pytest.raises(EdgepackError, match="unknown device"):
        device_budget("pi3")


def test_hot_row_cache_is_counted_as_the_store_allocates_it(bundle):
    from edgepack.runtime.row_store import RowStore

    b = Bundle(bundle("gemma3n_causal", "onnx", "int4"))
    spec = b.plan.row_stores["per_layer_embeddings"]
    store = RowStore(b.file(spec.file), spec, cache_mb=0.5)
    fp, plain = predict(b, row_cache_mb=0.5), predict(b)
    assert fp.parts["row_cache"] == store.cache.slab.nbytes > 0
    assert sum(fp.parts.values()) - sum(plain.parts.values()) == store.cache.slab.nbytes
