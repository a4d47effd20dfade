"""The real Gemma 3 270M (base) from its GGUF: edgepack's float bundles, in both formats, continue
"The capital of France is" exactly as transformers does when it loads the same GGUF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgepack.converters.builtin import gemma_gguf

PROMPT = "The capital of France is"
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def reference_270m(shared):
    """transformers' greedy run, once per test run (the xdist workers share it: loading the GGUF
    takes a minute): the prompt's ids, the new tokens, and each step's logits."""
    def generate(folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = gemma_gguf()
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        ids = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)(PROMPT).input_ids
        with torch.no_grad():
            out = model.eval().generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                        output_logits=True, return_dict_in_generate=True)
        folder.mkdir()
        np.savez(folder / "reference.npz", ids=np.array(ids), tokens=out.sequences[0, len(ids):].numpy(),
                 logits=np.stack([step[0].numpy() for step in out.logits]))

    ref = np.load(shared("270m-greedy-reference", generate) / "reference.npz", allow_pickle=False)
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
