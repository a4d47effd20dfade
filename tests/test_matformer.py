"""MatFormer slicing (converters/matformer.py) against independent references.

- The official E2B slice of E4B's real layout (transformers' classes on the meta device, configured
  as google/gemma-3n-E4B) is E2B's real layout, tensor for tensor, with the configuration values
  of google/gemma-3n-E2B, and the parameter counts the MatFormer Lab notebook prints.
- A tiny E4B-shaped checkpoint (6 layers, the last 2 KV-shared, FFNs 64 wide with 32 nested),
  cut three ways by `edgepack slice`: transformers loads each slice
  with no missing keys, and edgepack's bundles of it, both formats, reproduce transformers' greedy
  tokens (up to near-ties) with logits within 1e-3. Cutting while exporting (`export --matformer`) writes the same
  bundle as slicing first, float and int4.
- Bad configurations end in one line and exit code 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import sys

import pytest

from checkpoints import E4B_LIKE
from test_cli_output import edgepack, foreign_lines
from test_equivalence import NEW_TOKENS, PROMPTS, assert_follows_reference

from edgepack.converters import matformer
from edgepack.converters.synth import layout

# (name, layers_to_skip, ffn_hidden_dims) on the tiny E4B: the first shared layers skipped, all
# narrow (as E2B skips 20-24), widths per layer without skipping (as E2.54B), and a cache-owning
# layer skipped, which moves the KV-sharing boundary.
TINY_SLICES = [
    ("e2b-like", [4], [32] * 5),
    ("mixed", [], [32, 64, 32, 32, 64, 32]),
    ("early-skip", [1], [64, 32, 64, 32, 64]),
]
LAYERS, SHARED = 6, 2  # the last 2 read the K/V of layers 2 and 3


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack.cli", *args], capture_output=True, text=True, timeout=900)


def text_shapes(shapes: dict) -> dict:
    return {"model." + k[len("model.language_model."):]: v for k, v in shapes.items()
            if k.startswith("model.language_model.")}


def test_official_e2b_slice_of_e4b_is_e2b():
    e4b, e4b_shapes = layout("gemma-3n-E4B")
    e2b, e2b_shapes = layout("gemma-3n-E2B")
    cut = matformer.Cut(e4b["text_config"], matformer.load_slice("E2B"))
    assert cut.shapes(text_shapes(e4b_shapes)) == text_shapes(e2b_shapes)
    for key in matformer.SLICED_KEYS:
        assert cut.config[key] == e2b["text_config"][key], key
    # The notebook's counts for its E2B (transformers' language model; the vision tower, which
    # timm builds and this machine can't, is in its total only)
    sliced = cut.shapes(text_shapes(e4b_shapes))
    assert matformer.effective_params(sliced) == 1_905_495_648
    assert sum(math.prod(s) for s in sliced.values()) == 4_456_156_768


@pytest.mark.parametrize("name", list(matformer.PUBLISHED))
def test_published_slices_have_their_published_size(name):
    """Each name's configuration gives (about) the effective parameters it is named after: the
    table's figures, rounded to 0.01B, against the count of the sliced E4B layout. The layer-level
    E2.54B/E2.69B and block-level E2.49B count 0.02B under their names (Google's figures)."""
    e4b, shapes = layout("gemma-3n-E4B", towers=False)
    cut = matformer.Cut(e4b["text_config"], matformer.load_slice(name))
    effective = matformer.effective_params(cut.shapes(text_shapes(shapes))) / 1e9
    assert abs(effective - matformer.EFFECTIVE_B[name]) <= 0.021, effective


@pytest.fixture(scope="module")
def sliced(checkpoint, shared, tmp_path_factory):
    """slice name -> the checkpoint `edgepack slice` writes (child process, as a user runs it)."""
    def get(name: str):
        skip, dims = next((s, d) for n, s, d in TINY_SLICES if n == name)

        def make(out):
            spec = tmp_path_factory.mktemp("spec") / f"{name}.json"
            spec.write_text(json.dumps({"layers_to_skip": skip, "ffn_hidden_dims": dims}))
            proc = edgepack("slice", str(checkpoint(E4B_LIKE)), "--config", str(spec), "-o", str(out))
            assert proc.returncode == 0 and foreign_lines(proc.stderr) == [], proc.stderr
        return shared(f"matformer-{name}", make)
    return get


@pytest.mark.parametrize("name", [n for n, _, _ in TINY_SLICES])
def test_slice_loads_in_transformers_and_bundles_match_it(name, sliced, shared):
    from transformers import Gemma3nForCausalLM

    from edgepack.converters.export import ExportOptions, export
    from edgepack.converters.reference import load_transformers
    from edgepack.runtime import Generator

    folder = sliced(name)
    config = json.loads((folder / "config.json").read_text())["text_config"]
    skip, dims = next((s, d) for n, s, d in TINY_SLICES if n == name)
    assert config["num_hidden_layers"] == LAYERS - len(skip) and config["intermediate_size"] == dims
    assert config["num_kv_shared_layers"] == SHARED - sum(1 for i in skip if i >= LAYERS - SHARED)
    # every text tensor where transformers wants it, nothing of the text left over
    _, info = Gemma3nForCausalLM.from_pretrained(str(folder), key_mapping={r"^model\.language_model\.": "model."},
                                                 output_loading_info=True)
    assert info["missing_keys"] == set() or info["missing_keys"] == [], info["missing_keys"]
    assert all(k.startswith(("model.audio_tower.", "model.embed_audio.", "model.embed_vision."))
               for k in info["unexpected_keys"]), info["unexpected_keys"]
    reference = load_transformers(folder)
    for fmt in ("onnx", "litertlm"):
        from checkpoints import TINY_CONTEXT, TINY_PREFILL

        opts = ExportOptions(format=fmt, max_context=TINY_CONTEXT, prefill_len=TINY_PREFILL)
        out = shared(f"matformer-{name}-{fmt}", lambda o: export(folder, o, opts, log=lambda m: None))
        gen = Generator(out)
        for prompt in PROMPTS[::2]:
            ids = gen.encode(prompt)
            steps = []
            list(gen.generate_ids(ids, NEW_TOKENS, on_step=steps.append))
            assert_follows_reference(reference, ids, steps)


def _digests(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.name != "manifest.json"}


@pytest.mark.parametrize("quant", ["none", "int4"])
def test_export_while_slicing_equals_slice_then_export(quant, sliced, checkpoint, shared, tmp_path):
    """Float, and int4 (the narrow FFNs' 32 columns are one int4 block: the plan follows the cut shapes)."""
    from checkpoints import TINY_CONTEXT, TINY_PREFILL

    from edgepack.converters.export import ExportOptions, export

    name, skip, dims = TINY_SLICES[2]
    spec = tmp_path / "early.json"
    spec.write_text(json.dumps({"layers_to_skip": skip, "ffn_hidden_dims": dims}))
    opts = ExportOptions(format="onnx", quant=quant, max_context=TINY_CONTEXT, prefill_len=TINY_PREFILL)
    first = shared(f"matformer-{name}-onnx" + ("" if quant == "none" else f"-{quant}"),
                   lambda o: export(sliced(name), o, opts, log=lambda m: None))
    on_the_fly = export(checkpoint(E4B_LIKE), tmp_path / "fly", dataclasses.replace(opts, matformer=str(spec)),
                        log=lambda m: None)
    assert _digests(on_the_fly) == _digests(first)
    a, b = (json.loads((f / "manifest.json").read_text()) for f in (first, on_the_fly))
    assert a["model"]["config"] == b["model"]["config"] and a["files"] == b["files"]
    assert b["model"]["source"].endswith("(MatFormer early)")
    if quant != "none":  # each kept layer's down_proj at its own width, in int4
        report = {t["tensor"]: t for t in json.loads((on_the_fly / "quantization.json").read_text())["tensors"]}
        for i, width in enumerate(dims):
            down = report[f"model.layers.{i}.mlp.down_proj.weight"]
            assert down["shape"][1] == width and down["stored"].startswith("int4"), down


@pytest.mark.parametrize("layers_to_skip,dims,needle", [
    ([3], [32] * 5, "layer 3 can't be skipped: the KV-shared layers read its K/V"),
    ([2], [32] * 5, "layer 2 can't be skipped: the KV-shared layers read its K/V"),
    ([6], [32] * 5, "layer 6 is out of range"),
    ([], [32] * 5 + [128], "asks for FFN width 128; the checkpoint's is 64"),
    ([], [32] * 4, "4 FFN widths for 6 kept layers"),
])
def test_bad_configurations_get_one_line(layers_to_skip, dims, needle, checkpoint, tmp_path):
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"layers_to_skip": layers_to_skip, "ffn_hidden_dims": dims}))
    proc = cli("slice", str(checkpoint(E4B_LIKE)), "--config", str(spec), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_narrower_source_is_refused():
    proc = cli("profile", "--preset", "gemma-3n-E2B", "--matformer", "E2.98B")
    assert proc.returncode == 2 and "E2.98B slices a 35-layer model; this checkpoint has 30 layers" in proc.stderr, \
        proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_profile_tabulates_every_slice_and_picks_the_largest_that_fits():
    proc = edgepack("profile", "--preset", "gemma-3n-E4B", "--quant", "int4", "--matformer", "all",
                    "--device", "android-6gb", "--bandwidth", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    rows = {row["name"]: row for row in r["rows"]}
    assert list(rows) == list(matformer.PUBLISHED)
    # the E2B slice is planned as the E2B preset is (transformers' own E2B layout)
    e2b = json.loads(edgepack("profile", "--preset", "gemma-3n-E2B", "--quant", "int4", "--json").stdout)
    assert rows["E2B"]["peak"] == e2b["predicted"]["peak"]
    assert all(row["fits"] == (row["peak"] <= r["budget"]) for row in rows.values())
    fitting = [row for row in rows.values() if row["fits"]]
    assert r["largest_fitting"] == max(fitting, key=lambda row: row["effective_params"])["name"]
    assert rows["E4B"]["decode_tok_s_limit"] == pytest.approx(20e9 / rows["E4B"]["decode_bytes"])
    assert rows["E2B"]["bundle_bytes"] < rows["E2.98B"]["bundle_bytes"] < rows["E4B"]["bundle_bytes"]


def test_a_write_that_fails_midway_leaves_nothing(checkpoint, tmp_path):
    """A disk that fills up mid-slice (here a file size limit: the same OSError from write()) ends
    in one line, exit code 1, and no folder, partial or whole."""
    import resource
    import signal

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    spec = tmp_path / "e2b-like.json"
    spec.write_text(json.dumps({"layers_to_skip": [4], "ffn_hidden_dims": [32] * 5}))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "edgepack.cli", "slice", str(checkpoint(E4B_LIKE)), "--config",
                           str(spec), "-o", str(out)], capture_output=True, text=True, timeout=600, preexec_fn=limited)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == "edgepack: error: File too large", \
        proc.stderr
    assert foreign_lines(proc.stderr) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["e2b-like.json"]
