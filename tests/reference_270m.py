"""transformers' runs of the real Gemma 3 270M that the tests compare against, made with one load
of the GGUF (transformers takes most of a minute to read it) and shared by the whole test run
(conftest.py's `transformers_270m`): a greedy continuation with each step's logits
(test_gemma3_270m.py) and the fp32 perplexity of a held-out text (test_quality_270m.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PROMPT = "The capital of France is"
NEW_TOKENS = 16
GPL3 = Path("/usr/share/common-licenses/GPL-3")
TOKENS = 2048  # <bos> + the text's first 2,047 tokens


def compute(gguf: Path, folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from edgepack.converters.reference import load_transformers, perplexity

    model = load_transformers(gguf)
    ids = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)(PROMPT).input_ids
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    folder.mkdir()
    np.savez(folder / "greedy.npz", ids=np.array(ids), tokens=out.sequences[0, len(ids):].numpy(),
             logits=np.stack([step[0].numpy() for step in out.logits]))
    (folder / "perplexity.json").write_text(json.dumps(perplexity(gguf, GPL3.read_text(), TOKENS, model=model)))
