"""The real Gemma 3 270M (base) from its GGUF: edgepack's float bundles, in both formats, continue
"The capital of France is" exactly as transformers does when it loads the same GGUF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgepack.converters.builtin import gemma_gguf

PROMPT = "The capital of France is"
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def reference_270m():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gemma_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ids = tok(PROMPT).input_ids
    with torch.no_grad():
        out = model.eval().generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                    output_logits=True, return_dict_in_generate=True)
    return ids, out.sequences[0, len(ids):].tolist(), [l[0].numpy() for l in out.logits], tok


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["litertlm", "onnx"])
def test_270m_greedy_matches_transformers(fmt, bundle_270m, reference_270m):
    from edgepack.runtime import Generator

    ids, want, want_logits, tok = reference_270m
    gen = Generator(bundle_270m(fmt, "none"))  # float32, the CLI's defaults (sliding layers keep rings)
    assert gen.encode(PROMPT) == ids  # same tokenizer behaviour, <bos> included
    steps = []
    list(gen.generate_ids(ids, NEW_TOKENS, on_step=steps.append))
    assert [s.token for s in steps] == want[:len(steps)]
    assert len(steps) == NEW_TOKENS or steps[-1].token in gen.stop_ids
    err = max(float(np.abs(s.logits - r).max()) for s, r in zip(steps, want_logits))
    assert err < 1e-2, err
