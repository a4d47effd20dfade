"""What rounding the LM head alone costs, on the one real model here (Gemma 3 270M).

    .venv/bin/python benchmarks/lm_head_quality.py [--tokens 2048]

transformers runs the GGUF (dequantized to float32) once over `<bos>` + the first tokens of the
GPL-3 text, keeps the final hidden states, and scores them through the tied LM head rounded to
each grid while the lookup table stays exact: the perplexity each `lm_head` setting of a recipe
costs (`int4` keeps the head 8-bit per channel, `int4-head4` rounds it to 4-bit blocks of 32).
The rounding is ai-edge-quantizer's (symmetric, scale = max|w| / 7 per block), what the
.litertlm exporter stores; "clip search" picks each block's scale among 0.6-1.0 x that for the
least squared error, over codes -8..7 (no exporter uses it). The 270M is the worst case for a
coarse head: its embedding is 63% of its weights (of the weights a Gemma 3n E2B decode step
reads, 22%).
"""

from __future__ import annotations

import argparse

import numpy as np

GRIDS = [("float32 (the GGUF's Q8_0, dequantized)", 32, 0, "absmax"), ("int8 per channel (int4 recipe)", 8, 0, "absmax"),
         ("int4 blocks of 32 (int4-head4)", 4, 32, "absmax"), ("int4 blocks of 32, clip search", 4, 32, "clip"),
         ("int4 blocks of 128", 4, 128, "absmax"), ("int4 per channel", 4, 0, "absmax")]


def rounded(w: np.ndarray, bits: int, block: int, how: str) -> np.ndarray:
    if bits == 32:
        return w
    rows, cols = w.shape
    wb = w.reshape(rows, cols // (block or cols), -1)
    qmax = 2 ** (bits - 1) - 1
    top = np.maximum(np.abs(wb).max(-1, keepdims=True), 1e-9)
    if how == "absmax":
        return (np.clip(np.rint(wb / (top / qmax)), -qmax, qmax) * (top / qmax)).reshape(rows, cols)
    best, err = None, None
    for a in np.linspace(0.6, 1.0, 17):
        s = top * a / qmax
        r = np.clip(np.rint(wb / s), -qmax - 1, qmax) * s
        e = ((r - wb) ** 2).sum(-1, keepdims=True)
        best = r if best is None else np.where(e < err, r, best)
        err = e if err is None else np.minimum(e, err)
    return best.reshape(rows, cols)


def main() -> None:
    import torch
    from tokenizers import Tokenizer

    from edgepack.converters import reference, sources
    from edgepack.converters.builtin import gemma_gguf
    from edgepack.evaluate import log_softmax

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    a = p.parse_args()
    src = sources.open_source(str(gemma_gguf()))
    tok = Tokenizer.from_str(src.tokenizer_json)
    with open(a.text, encoding="utf-8") as f:
        ids = [src.bos_id] + tok.encode(f.read(), add_special_tokens=False).ids[: a.tokens - 1]
    model = reference.load_transformers(gemma_gguf())
    assert model.config.final_logit_softcapping is None  # logits are h @ W.T
    with torch.no_grad():
        hidden = model.model(torch.tensor([ids[:-1]])).last_hidden_state[0].float()
    w = model.lm_head.weight.detach().float().numpy()
    targets = np.array(ids[1:])
    print(f"Gemma 3 270M, LM head {w.shape[0]:,} x {w.shape[1]}, perplexity over {len(targets)} tokens of {a.text}")
    for label, bits, block, how in GRIDS:
        head = torch.from_numpy(np.ascontiguousarray(rounded(w, bits, block, how), np.float32))
        nll = 0.0
        for i in range(0, len(hidden), 256):
            lp = log_softmax((hidden[i:i + 256] @ head.T).numpy())
            nll -= float(lp[np.arange(len(lp)), targets[i:i + len(lp)]].sum())
        print(f"  {label:<42} {np.exp(nll / len(targets)):8.3f}", flush=True)


if __name__ == "__main__":
    main()
