"""`edgepack eval`: perplexity of a bundle on a text, and how far it strays from a reference.

Teacher-forced through the decode graph, one token per step: `<bos>` + the text's first N-1
tokens, every next token scored. With a reference (another bundle, or a checkpoint run by
transformers), top-1 agreement and mean KL(reference || bundle) per position.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError
from edgepack.runtime import Generator


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def token_nll(x: np.ndarray, token: int) -> float:
    """-log softmax(x)[token] without the whole log-softmax: the log-sum-exp in float32 around the
    maximum (every term in (0, 1], summed pairwise by numpy: relative error ~1e-7, far below what
    a perplexity is read to), the rest in float64. A 262k vocabulary: ~1 ms instead of ~9."""
    m = float(x.max())
    return m + float(np.log(np.exp(x - np.float32(m), dtype=np.float32).sum(dtype=np.float64))) - float(x[token])


@dataclasses.dataclass
class EvalResult:
    tokens: int  # positions scored
    perplexity: float
    reference_perplexity: float | None = None
    top1_agreement: float | None = None
    mean_kl: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def eval_ids(gen: Generator, text: str, tokens: int) -> list[int]:
    if tokens < 2:
        raise EdgepackError(f"--tokens must be >= 2, got {tokens}")
    if tokens > gen.max_context:
        raise EdgepackError(f"--tokens {tokens} exceeds the bundle's context ({gen.max_context})")
    ids = [gen.bos_id] + gen.tokenizer.encode(text)[: tokens - 1]
    if len(ids) < 2:
        raise EdgepackError("the text has no tokens to score")
    return ids


def bundle_logits(gen: Generator, ids: list[int]) -> Callable[[int], np.ndarray]:
    """step(i) -> the logits predicting ids[i+1]; call with i = 0, 1, 2, ... in order."""
    gen.engine.reset()

    def step(i: int) -> np.ndarray:
        return gen.engine.decode(ids[i], i)

    return step


BYTES_PER_TOKEN = 64  # far more than any Gemma token's text: what is read of a text per token scored


def read_text(path: Path, tokens: int) -> str:
    """The start of a text file, as much as `tokens` tokens can need, not the whole file."""
    if not path.is_file():
        raise EdgepackError(f"text file not found (or not a regular file): {path}")
    with open(path, "rb") as f:
        return f.read(tokens * BYTES_PER_TOKEN).decode("utf-8", errors="replace")


def evaluate(bundle: str | Path, text: str, tokens: int = 2048, reference: str | None = None,
             threads: int | None = None) -> EvalResult:
    gen = Generator(bundle, threads=threads)
    ids = eval_ids(gen, text, tokens)
    n = len(ids) - 1
    ours = bundle_logits(gen, ids)
    ref_step, ref_all = None, None
    if reference is not None:
        if (Path(reference) / "manifest.json").exists():
            ref_gen = Generator(Bundle(reference), threads=threads)
            ref_step = bundle_logits(ref_gen, ids)
        else:  # a checkpoint, run by transformers: needs the export side (edgepack[convert])
            from edgepack.converters.builtin import resolve
            from edgepack.converters.reference import all_position_logits

            ref_all = all_position_logits(resolve(reference), ids[:-1])
    nll = ref_nll = kl = 0.0
    agree = 0
    for i in tqdm(range(n), desc="scoring", unit="tok", leave=False, disable=None):  # None: a terminal only
        if reference is None:
            nll += token_nll(ours(i), ids[i + 1])
            continue
        lp = log_softmax(ours(i))
        nll -= lp[ids[i + 1]]
        rlp = log_softmax(ref_step(i) if ref_step else ref_all[i])
        ref_nll -= rlp[ids[i + 1]]
        kl += float(np.sum(np.exp(rlp) * (rlp - lp)))
        agree += int(np.argmax(rlp) == np.argmax(lp))
    result = EvalResult(tokens=n, perplexity=float(np.exp(nll / n)))
    if reference is not None:
        result.reference_perplexity = float(np.exp(ref_nll / n))
        result.top1_agreement = agree / n
        result.mean_kl = kl / n
    return result
