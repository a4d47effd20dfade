"""Next-token choice: greedy, or temperature with top-k and top-p (nucleus) filtering."""

from __future__ import annotations

import dataclasses

import numpy as np

from edgepack.errors import EdgepackError


@dataclasses.dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None

    def validate(self) -> "SamplingParams":
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise EdgepackError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise EdgepackError(f"--top-k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise EdgepackError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise EdgepackError(f"--seed must be a whole number from 0 to 2**63 - 1, got {self.seed}")
        return self


class Sampler:
    def __init__(self, params: SamplingParams):
        self.p = params.validate()
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        p = self.p
        if p.temperature == 0 or p.top_k == 1:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / p.temperature
        if p.top_k and p.top_k < len(x):  # a k past the vocabulary keeps every token
            kth = np.partition(x, -p.top_k)[-p.top_k]
            x = np.where(x < kth, -np.inf, x)
        probs = np.exp(x - x.max())
        probs /= probs.sum()
        if p.top_p < 1:
            order = np.argsort(-probs)
            cum = np.cumsum(probs[order])
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            cut = int(np.searchsorted(cum, p.top_p)) + 1
            keep = np.zeros_like(probs, dtype=bool)
            keep[order[:cut]] = True
            probs = np.where(keep, probs, 0.0)
            probs /= probs.sum()
        return int(self.rng.choice(len(probs), p=probs))
