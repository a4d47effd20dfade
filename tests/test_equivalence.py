"""Bundles against transformers: greedy tokens equal (up to near-ties), per-step logits within 1e-3.

Both formats (the .litertlm through both of LiteRT's APIs: CompiledModel, and the Interpreter that
cores without LSE atomics use), three tiny checkpoints (Gemma 3n multimodal layout with KV sharing, activation
sparsity, AltUp, LAuReL; Gemma 3n causal in another shape; Gemma 3). The sliding window (8 and 6
tokens) is far shorter than prompt + 32 generated tokens, and one prompt is longer than the
8-token prefill graph, so chunked prefill, window masking and the sliding-window layers' ring
caches (wrapping twice) are all exercised.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoints import MODELS

# (format, LiteRT API): the Interpreter is what a Raspberry Pi 4 runs (runtime/litert_engine.py)
ENGINES = [("litertlm", "compiled"), ("litertlm", "interpreter"), ("onnx", None)]

PROMPTS = [
    "The capital of France is",
    "Hi",
    "Once upon a time, in a land far away, there lived a small dragon who loved to read books",
]
NEW_TOKENS = 32


def reference_logits(model, ids: list[int], ours: list[int], **inputs) -> np.ndarray:
    """transformers' raw logits at each of our steps, [steps, vocab]: its greedy generate made to
    take our tokens (a logits processor), so each step is its incremental decoding of our prefix."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class TakeOurs(LogitsProcessor):
        def __call__(self, input_ids, scores):
            i = input_ids.shape[1] - len(ids)
            if i >= len(ours):  # past where ours stopped (a stop id): transformers' own choice
                return scores
            forced = torch.full_like(scores, -torch.inf)
            forced[:, ours[i]] = 0
            return forced

    with torch.no_grad():  # NEW_TOKENS at least, whatever ours stopped at: every call alike
        out = model.generate(torch.tensor([ids]), max_new_tokens=max(len(ours), NEW_TOKENS), do_sample=False,
                             eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True,
                             logits_processor=LogitsProcessorList([TakeOurs()]), **inputs)
    assert out.sequences[0, len(ids):len(ids) + len(ours)].tolist() == ours
    return np.stack([step[0].numpy() for step in out.logits[:len(ours)]])


def reference_logits_in_a_fresh_process(source: Path, ids: list[int], ours: list[int]) -> np.ndarray:
    """reference_logits from a new Python process that loads `source` and does nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.npy"
        proc = subprocess.run([sys.executable, __file__, str(source), json.dumps(ids), json.dumps(ours), str(out)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return np.load(out)


def _misses(steps: list, ref: np.ndarray, tol: float) -> list[str]:
    """Each step whose logits are off by `tol` or more, or whose token is not transformers' argmax
    within 2 * tol (a near-tie: a random tiny model's top two logits are at times closer than the
    float error of two correct implementations, which logits within tol on both sides allow)."""
    out = []
    for i, (step, r) in enumerate(zip(steps, ref)):
        err, top = float(np.abs(step.logits - r).max()), int(r.argmax())
        if err >= tol:
            out.append(f"step {i}: max abs logit error {err:.6g}")
        elif r[top] - r[step.token] >= 2 * tol:
            out.append(f"step {i}: took {step.token}, transformers {top}, {r[top] - r[step.token]:.2g} below its top")
    return out


def assert_follows_reference(model, ids: list[int], steps: list, tol: float = 1e-3, source: Path | None = None,
                             **inputs) -> None:
    """Every greedy step of ours against transformers' logits for the same prefix: within `tol`,
    and our token its argmax up to a near-tie.

    `source`: the checkpoint `model` was loaded from. On CI the reference in the test process has
    twice given logits ~3 off at one step while the three engines agreed with each other to 2e-6
    (never reproduced on its own; the cause is unknown). If the in-process reference misses, the
    same check is made against transformers in a fresh process, and a warning records both, with
    the in-process model run again and in one pass, so the next occurrence says where it lies."""
    ours = [s.token for s in steps]
    ref = reference_logits(model, ids, ours, **inputs)
    misses = _misses(steps, ref, tol)
    if misses and source is not None:
        again = reference_logits(model, ids, ours, **inputs)
        with torch.no_grad():
            one_pass = model(torch.tensor([ids + ours[:-1]])).logits[0, len(ids) - 1:].numpy()
        fresh = reference_logits_in_a_fresh_process(source, ids, ours)
        warnings.warn(f"the in-process transformers reference missed ({misses[0]}; prompt {ids}); its distance "
                      f"from a fresh process's: {float(np.abs(ref - fresh).max()):.3g} (run again "
                      f"{float(np.abs(again - fresh).max()):.3g}, one pass {float(np.abs(one_pass - fresh).max()):.3g}); "
                      f"checked against the fresh process", stacklevel=2)
        misses = _misses(steps, fresh, tol)
    assert not misses, misses[0]


@pytest.mark.parametrize("fmt,api", ENGINES)
@pytest.mark.parametrize("name", MODELS)
def test_greedy_and_logits_match_transformers(name, fmt, api, bundle, reference, checkpoint, monkeypatch):
    from edgepack.runtime import Generator
    from edgepack.system import LITERT_API_ENV

    if api:
        monkeypatch.setenv(LITERT_API_ENV, api)
    gen = Generator(bundle(name, fmt))
    assert getattr(gen.engine, "api", None) == api
    window = gen.bundle.manifest["model"]["config"]["sliding_window"]
    assert any(len(gen.encode(p)) > 8 for p in PROMPTS)  # one prompt needs chunked prefill
    assert len(gen.encode(PROMPTS[2])) + NEW_TOKENS > 3 * window  # generation runs past the window
    assert len(gen.encode(PROMPTS[2])) + NEW_TOKENS > 2 * min(gen.bundle.cache_lengths)  # ... and round the rings
    for prompt in PROMPTS:
        ids = gen.encode(prompt)
        steps = []
        ours = list(gen.generate_ids(ids, NEW_TOKENS, on_step=steps.append))
        assert_follows_reference(reference(name), ids, steps, source=checkpoint(name))
        chosen = [s.token for s in steps]
        # Either all 32 tokens came out, or generation stopped on one of the bundle's stop ids.
        assert len(chosen) == NEW_TOKENS or chosen[-1] in gen.stop_ids
        assert ours == [t for t in chosen if t not in gen.stop_ids]


if __name__ == "__main__":  # reference_logits_in_a_fresh_process: SOURCE IDS OURS OUT.npy
    from edgepack.converters.reference import load_transformers

    np.save(sys.argv[4], reference_logits(load_transformers(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])))
