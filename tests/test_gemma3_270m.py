"""The real Gemma 3 270M (base) from its GGUF: edgepack's float bundles, in both formats, continue
"The capital of France is" exactly as transformers does when it loads the same GGUF."""

from __future__ import annotations

import numpy as np
import pytest

from reference_270m import NEW_TOKENS, PROMPT


@pytest.fixture(scope="module")
def reference_270m(transformers_270m):
    """transformers' greedy run: the prompt's ids, the new tokens, and each step's logits."""
    ref = np.load(transformers_270m / "greedy.npz", allow_pickle=False)
    return ref["ids"].tolist(), ref["tokens"].tolist(), list(ref["logits"])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["litertlm", "onnx"])
def test_270m_greedy_matches_transformers(fmt, bundle_270m, reference_270m):
    from edgepack.runtime import Generator

    ids, want, want_logits = reference_270m
    gen = Generator(bundle_270m(fmt, "none"))  # float32, the CLI's defaults (sliding layers keep rings)
    assert gen.encode(PROMPT) == ids  # same tokenizer behaviour, <bos> included
    steps = []
    list(gen.generate_ids(ids, NEW_TOKENS, on_step=steps.append))
    assert [s.token for s in steps] == want[:len(steps)]
    assert len(steps) == NEW_TOKENS or steps[-1].token in gen.stop_ids
    err = max(float(np.abs(s.logits - r).max()) for s, r in zip(steps, want_logits))
    assert err < 1e-2, err
