"""`edgepack eval` against transformers scoring the same tokens, and bundle against bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from checkpoints import TINY_CONTEXT

GPL3 = Path("/usr/share/common-licenses/GPL-3")  # ships with Debian


def test_eval_matches_transformers_perplexity(bundle, checkpoint, capsys):
    from edgepack.cli import main
    from edgepack.converters.reference import all_position_logits
    from edgepack.runtime import Generator
    from edgepack.evaluate import eval_ids, log_softmax

    folder = bundle("gemma3n_multimodal", "onnx")
    assert main(["eval", str(folder), "--text", str(GPL3), "--tokens", str(TINY_CONTEXT),
                 "--reference", str(checkpoint("gemma3n_multimodal")), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    # The reference perplexity, computed here independently from transformers' logits.
    ids = eval_ids(Generator(folder), GPL3.read_text(), TINY_CONTEXT)
    lp = log_softmax(all_position_logits(checkpoint("gemma3n_multimodal"), ids[:-1]))
    want = float(np.exp(-np.mean(lp[np.arange(len(ids) - 1), ids[1:]])))
    assert got["tokens"] == TINY_CONTEXT - 1
    assert abs(got["reference_perplexity"] - want) / want < 1e-9
    assert abs(got["perplexity"] - want) / want < 1e-4
    assert got["top1_agreement"] == 1.0 and got["mean_kl"] < 1e-6
    # Without a reference only each token's log-probability is computed (evaluate.token_nll)
    assert main(["eval", str(folder), "--text", str(GPL3), "--tokens", str(TINY_CONTEXT), "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert abs(alone["perplexity"] - got["perplexity"]) / got["perplexity"] < 1e-6


def test_eval_bundle_against_bundle(bundle, capsys):
    from edgepack.cli import main

    assert main(["eval", str(bundle("gemma3", "litertlm")), "--text", str(GPL3), "--tokens", "40",
                 "--reference", str(bundle("gemma3", "onnx")), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["top1_agreement"] == 1.0 and got["mean_kl"] < 1e-6
    assert abs(got["perplexity"] - got["reference_perplexity"]) / got["perplexity"] < 1e-4


def test_eval_rejects_bad_input(bundle, capsys, tmp_path):
    from edgepack.cli import main

    folder = str(bundle("gemma3", "onnx"))
    assert main(["eval", folder, "--text", str(tmp_path / "none.txt")]) == 2
    assert "text file not found" in capsys.readouterr().err
    assert main(["eval", folder, "--text", str(GPL3), "--tokens", "65"]) == 2
    assert "exceeds the bundle's context (64)" in capsys.readouterr().err
