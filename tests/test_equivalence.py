"""Bundles against transformers: greedy tokens equal (up to near-ties), per-step logits within 1e-3.

Both formats (the .litertlm through both of LiteRT's APIs: CompiledModel, and the Interpreter that
cores without LSE atomics use), three tiny checkpoints (Gemma 3n multimodal layout with KV sharing, activation
sparsity, AltUp, LAuReL; Gemma 3n causal in another shape; Gemma 3). The sliding window (8 and 6
tokens) is far shorter than prompt + 32 generated tokens, and one prompt is longer than the
8-token prefill graph, so chunked prefill, window masking and the sliding-window layers' ring
caches (wrapping twice) are all exercised.
"""

from __future__ import annotations

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


def assert_follows_reference(model, ids: list[int], steps: list, tol: float = 1e-3, **inputs) -> None:
    """Every greedy step of ours against transformers' logits for the same prefix: within `tol`,
    and our token transformers' argmax. A random tiny model's top two logits are at times closer
    than the float error of two correct implementations (a near-tie: within 2 * tol, which logits
    within tol on both sides imply), and there the two may pick differently. So transformers'
    generate is made to take our tokens (its raw logits are still its own), and every step is
    checked against its incremental decoding of our prefix."""
    from transformers import LogitsProcessor, LogitsProcessorList

    ours = [s.token for s in steps]

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
    for i, (step, ref) in enumerate(zip(steps, out.logits)):
        ref = ref[0].numpy()
        err = float(np.abs(step.logits - ref).max())
        assert err < tol, f"step {i}: max abs logit error {err}"
        top = int(ref.argmax())
        gap = float(ref[top] - ref[step.token])
        assert gap < 2 * tol, f"step {i}: took {step.token}, transformers {top}, {gap:.2g} below its top"


@pytest.mark.parametrize("fmt,api", ENGINES)
@pytest.mark.parametrize("name", MODELS)
def test_greedy_and_logits_match_transformers(name, fmt, api, bundle, reference, monkeypatch):
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
        assert_follows_reference(reference(name), ids, steps)
        chosen = [s.token for s in steps]
        # Either all 32 tokens came out, or generation stopped on one of the bundle's stop ids.
        assert len(chosen) == NEW_TOKENS or chosen[-1] in gen.stop_ids
        assert ours == [t for t in chosen if t not in gen.stop_ids]

