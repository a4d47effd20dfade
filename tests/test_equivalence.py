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


def assert_follows_reference(model, ids: list[int], steps: list, tol: float = 1e-3, **inputs) -> None:
    """Every greedy step of ours against transformers' logits for the same prefix: within `tol`,
    and our token its argmax up to a near-tie."""
    misses = _misses(steps, reference_logits(model, ids, [s.token for s in steps], **inputs), tol)
    assert not misses, misses[0]


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


@pytest.mark.parametrize("fmt,api", ENGINES)
def test_multimodal_ids_take_their_embedders_rows(fmt, api, bundle, reference, monkeypatch):
    """Ids of Gemma 3n's vision and audio vocabularies (>= 262,144) in a text prompt take
    embed_vision's and embed_audio's embeddings, as in transformers' Gemma3nModel (the reference's
    text view embeds them so: test_audio_prompts checks it against the full class). A random model
    picks such an id greedily about once in a thousand tokens, so this is the text path too."""
    from edgepack.runtime import Generator
    from edgepack.system import LITERT_API_ENV

    if api:
        monkeypatch.setenv(LITERT_API_ENV, api)
    gen = Generator(bundle("gemma3n_multimodal", fmt))
    a = gen.bundle.plan.audio
    vision, last = a.multimodal_offset, gen.bundle.plan.graph.vocab_size - 1
    for ids in ([2, vision + 5, 818, a.end_id, 1001, last] + gen.encode(PROMPTS[0])[1:],  # prefill, chunked
                gen.encode(PROMPTS[1]) + [vision + 100, 7]):  # multimodal ids right before the end
        steps = []
        list(gen.generate_ids(ids, 8, on_step=steps.append))
        assert_follows_reference(reference("gemma3n_multimodal"), ids, steps)
