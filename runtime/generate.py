"""Text in, streamed text out: tokenizer, chat template, prefill, decode loop, stop ids.

    from edgepack.runtime import Generator
    gen = Generator("bundles/gemma-3-270m")
    for piece in gen.stream("The capital of France is", max_new_tokens=32):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError
from edgepack.footprint import check_fits
from edgepack.runtime import audio_prompt, chat as chat_prompt
from edgepack.runtime.engines import open_engine
from edgepack.runtime.row_store import StoreOptions
from edgepack.runtime.sampling import Sampler, SamplingParams
from edgepack.runtime.tokenizer import load as read_tokenizer
from edgepack.system import release_freed_heap


@dataclasses.dataclass
class StepResult:
    token: int
    logits: np.ndarray


@dataclasses.dataclass
class RunStats:
    """How the last generation went (`Generator.last_run`)."""
    prompt_tokens: int
    new_tokens: int = 0  # decode steps run (a stop token counts: it was computed)
    first_token_s: float = 0.0  # prompt in -> first new token sampled (prefill + one decode step)
    decode_s: float = 0.0  # the steps after the first
    reused_tokens: int = 0  # prompt tokens whose K/V a previous run left in the cache (not prefilled)
    audio_s: float = 0.0  # encoding the prompt's audio clips, before the prompt went in

    @property
    def decode_tok_s(self) -> float | None:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else None


# Parsed tokenizers by the sha256 of their file, while a Generator holds them: bundles that ship
# the same tokenizer (one model's formats and recipes) share one parse. Gemma's 262k pieces and
# 515k merges take ~1 s to read on a desktop core and hold ~23 MiB (runtime/tokenizer.py).
_tokenizers: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def load_tokenizer(bundle: Bundle, verified: bool):
    """The bundle's tokenizer; an already parsed one with the same sha256 when its file's checksum
    was verified (unverified, the file may not be what the manifest says: it is parsed)."""
    name = bundle.plan.tokenizer.file
    sha = next(f.sha256 for f in bundle.plan.files if f.path == name)
    if verified and (shared := _tokenizers.get(sha)) is not None:
        return shared
    tokenizer = read_tokenizer(bundle.file(name))
    release_freed_heap()  # reading tokenizer.json leaves its parsed JSON freed but still mapped
    if verified:
        _tokenizers[sha] = tokenizer
    return tokenizer


class Generator:
    """`verify` checks every file's sha256; `memory_check` refuses, before anything big is read,
    a bundle whose predicted peak (edgepack/footprint.py) is over what this process may use;
    `stores` sets the per-layer embedding store's hot-row cache and kernel advice (row_store.py);
    `trusted_keys` requires the bundle to be signed by one of them (edgepack/signing.py)."""

    def __init__(self, bundle: str | Path | Bundle, threads: int | None = None, verify: bool = True,
                 memory_check: bool = True, stores: StoreOptions = StoreOptions(), trusted_keys: list | None = None):
        t0 = time.perf_counter()
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle, trusted_keys)
        # the manifest alone decides whether it fits: refuse before reading GBs for the checksums
        self.footprint = check_fits(self.bundle, stores.cache_mb) if memory_check else None
        self.bundle.verify(checksums=verify)
        tok = self.bundle.plan.tokenizer
        self.tokenizer = load_tokenizer(self.bundle, verified=verify)
        self.bos_id, self.add_bos = tok.bos_id, tok.add_bos
        self.stop_ids = set(tok.stop_ids)
        self.chat_template = self.bundle.plan.chat_template
        self.engine = open_engine(self.bundle, threads, stores)
        self.threads = threads
        self._audio_encoder = None  # loaded when audio is first used (audio_soft_tokens)
        self.load_s = time.perf_counter() - t0  # checks, checksums, tokenizer and engine
        self.hit_context_limit = False  # set when the last generation ran into max_context
        # A prompt that starts with the last run's tokens (a chat's next turn) prefills only the
        # rest (Engine.reusable); False prefills every prompt whole.
        self.reuse_cache = True
        self.last_run: RunStats | None = None

    @property
    def max_context(self) -> int:
        return self.engine.cache_len

    def encode(self, prompt: str, chat: bool = False, clips: int = 0) -> list[int]:
        """The prompt's ids; with `clips`, that many audio clips' places before its text (the
        soft tokens' ids, whose embeddings `generate_ids` takes)."""
        a = self.bundle.plan.audio if clips else None
        if clips and a is None:
            raise EdgepackError(f"{self.bundle.path} has no audio encoder: export a Gemma 3n checkpoint with its "
                                f"audio tower for audio prompts")
        text = audio_prompt.MARK * clips + prompt
        if chat:
            if not self.chat_template:
                raise EdgepackError("this bundle has no chat template (a base model): drop --chat")
            # the template writes <bos>; the user's text stays text (chat.py)
            return chat_prompt.encode(self.tokenizer, self.chat_template, [{"role": "user", "content": text}], a)
        plain = self.tokenizer.encode
        ids = audio_prompt.expand(plain, text, a) if a else plain(prompt)
        return [self.bos_id] + ids if self.add_bos else ids

    def audio_soft_tokens(self, clips: list[audio_prompt.Clip]) -> list[np.ndarray]:
        """Each clip's soft token embeddings; the audio encoder is loaded on first use."""
        if self._audio_encoder is None:
            vocab = self.engine.stores[self.bundle.plan.audio.vocab_store]
            self._audio_encoder = audio_prompt.AudioEncoder(self.bundle, vocab, self.threads)
        return self._audio_encoder.soft_tokens([audio_prompt.load(c) for c in clips])

    def check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise EdgepackError("empty prompt")
        if len(ids) > self.max_context:
            raise EdgepackError(
                f"prompt is {len(ids)} tokens; this bundle's context is {self.max_context} "
                f"(re-export with a larger --max-context)")
        bad = [i for i in ids if not 0 <= i < self.engine.vocab_size]
        if bad:
            raise EdgepackError(f"token id {bad[0]} is outside the model's vocabulary")

    def generate_ids(self, ids: list[int], max_new_tokens: int, sampling: SamplingParams | None = None,
                     on_step: Callable[[StepResult], None] | None = None,
                     soft: list[np.ndarray] | None = None) -> Iterator[int]:
        """Yields generated token ids; stops at a stop id (not yielded), max_new_tokens or the
        context limit. `on_step` sees every step's logits (tests compare them with transformers).
        `soft`: the embeddings of the prompt's audio soft tokens, clip by clip (audio_soft_tokens)."""
        check_max_new_tokens(max_new_tokens)
        self.check_prompt(ids)
        placed = {}
        if soft:
            at = [p for p, i in enumerate(ids) if i == self.bundle.plan.audio.soft_id]
            rows = np.concatenate(soft)
            if len(at) != len(rows):
                raise EdgepackError(f"the prompt has {len(at)} audio soft tokens for {len(rows)} embeddings")
            placed = dict(zip(at, rows))
        sampler = Sampler(sampling or SamplingParams())
        stats = self.last_run = RunStats(len(ids))
        t0 = time.perf_counter()
        reuse = stats.reused_tokens = self.engine.reusable(ids) if self.reuse_cache else 0
        if reuse == 0:
            self.engine.reset()
        self.engine.prefill(np.asarray(ids[reuse:-1], np.int32), start=reuse, soft=placed)
        token, pos = ids[-1], len(ids) - 1
        self.hit_context_limit = False
        for _ in range(max_new_tokens):
            if pos >= self.max_context:
                self.hit_context_limit = True
                return
            logits = self.engine.decode(token, pos)
            token = sampler(logits)
            now, stats.new_tokens = time.perf_counter(), stats.new_tokens + 1
            if stats.new_tokens == 1:
                stats.first_token_s, t0 = now - t0, now
            stats.decode_s = now - t0
            if on_step:
                on_step(StepResult(token, logits))
            if token in self.stop_ids:
                return
            yield token
            pos += 1

    def stream(self, prompt: str, max_new_tokens: int = 128, sampling: SamplingParams | None = None,
               chat: bool = False, audio: list[audio_prompt.Clip] | None = None) -> Iterator[str]:
        """Yields text pieces as they become complete characters. `audio`: WAV files or 16 kHz
        samples, placed before the prompt's text."""
        out: list[int] = []
        shown = ""
        ids = self.encode(prompt, chat, len(audio or []))
        self.check_prompt(ids)  # before the clips are encoded
        t0 = time.perf_counter()
        soft = self.audio_soft_tokens(audio) if audio else None
        audio_s = time.perf_counter() - t0 if audio else 0.0
        for token in self.generate_ids(ids, max_new_tokens, sampling, soft=soft):
            out.append(token)
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # a multi-byte character split across tokens
                continue
            yield text[len(shown):]
            shown = text
        self.last_run.audio_s = audio_s  # set by generate_ids when it started

    def generate(self, prompt: str, max_new_tokens: int = 128, sampling: SamplingParams | None = None,
                 chat: bool = False, audio: list[audio_prompt.Clip] | None = None) -> str:
        return "".join(self.stream(prompt, max_new_tokens, sampling, chat, audio))


def check_max_new_tokens(n: int) -> None:
    if n < 1:
        raise EdgepackError(f"--max-new-tokens must be >= 1, got {n}")
