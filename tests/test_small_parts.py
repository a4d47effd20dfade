"""The small parts that the end-to-end tests only reach through whole generations, each against a
plain reference written here from its definition: ring caches (where positions go, what a query
may see), prefill chunking, the sampler's distributions, and the hot-row LRU."""

from __future__ import annotations

import collections
import itertools
import os

import numpy as np
import pytest

from edgepack import contract
from edgepack.runtime.engine import plan_chunks
from edgepack.runtime.row_store import HotRows
from edgepack.runtime.sampling import Sampler, SamplingParams


# --- ring caches ---------------------------------------------------------------------------------

def test_ring_spans_put_each_position_where_a_ring_keeps_it():
    """Writing positions start..start+n-1 run by run leaves the ring as writing them one at a time
    into slot p % length does."""
    for length, start, n in itertools.product([1, 3, 8], range(0, 20, 3), range(1, 20)):
        want = {}
        for p in range(start, start + n):
            want[p % length] = p
        got = {}
        for slot, j, count in contract.ring_spans(start, n, length):
            assert 0 <= slot and slot + count <= length and 0 <= j and j + count <= n
            for k in range(count):
                got[slot + k] = start + j + k
        assert got == want, (length, start, n)


def test_causal_mask_shows_each_query_the_slots_up_to_its_position():
    pos = np.array([3, 4, 5])
    mask = contract.causal_mask(pos, 8)[0, 0]
    for q, p in enumerate(pos):
        for k in range(8):
            assert (mask[q, k] == 0) == (k <= p)
    assert np.isfinite(mask).all()  # a fully masked row must give a uniform softmax, not NaN


def test_ring_mask_shows_exactly_the_window_held_in_the_ring():
    """For every query, the visible slots are those whose held position (the latest p written with
    p % ring == slot) lies in the query's window (q - window, q]."""
    torch = pytest.importorskip("torch")
    from edgepack.converters.models.blocks import ring_mask

    window = 4
    for chunk in (1, 3):
        ring = window + chunk - 1
        for written_to in range(chunk, 3 * ring):
            pos = torch.arange(written_to - chunk, written_to, dtype=torch.int32)
            mask = ring_mask(pos, ring, window, torch.tensor(written_to))[0, 0]
            held = {p % ring: p for p in range(written_to)}  # later writes replace earlier ones
            for t, q in enumerate(pos.tolist()):
                visible = {s for s in range(ring) if s in held and q - window < held[s] <= q}
                assert {s for s in range(ring) if mask[t, s] == 0} == visible, (chunk, written_to, q)
                # every position of the window is still held: the ring is long enough
                assert {held[s] for s in visible} == set(range(max(0, q - window + 1), q + 1))


def test_cache_lengths_keep_rings_only_where_they_are_shorter():
    kinds = ["sliding_attention", "full_attention", "sliding_attention"]
    assert contract.cache_lengths(kinds, [0, 1, 2], 8, 64, 8) == [15, 64, 15]
    assert contract.cache_lengths(kinds, [0, 1, 2], 8, 64, 1) == [8, 64, 8]
    assert contract.cache_lengths(kinds, [0, 1, 2], 8, 12, 8) == [12, 12, 12]  # ring not shorter: context


# --- prefill chunks ------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [None, 1, 4, 8])
def test_prefill_chunks_cover_the_prompt_in_order(length):
    for n in range(0, 40):
        for cache in (16, 64, 512):
            chunks = plan_chunks(n, length, cache)
            covered = set()
            for start, count in chunks:
                covered |= set(range(start, start + count))
            assert covered == set(range(n)), (n, length, cache)
            if not chunks:
                continue
            assert chunks[-1][0] + chunks[-1][1] == n  # the last chunk ends at the prompt's end
            starts = [s for s, _ in chunks]
            assert starts == sorted(starts)
            if length is None:  # any length: DYNAMIC_PREFILL_CHUNK (or the cache) at a time, no overlap
                assert all(c <= min(cache, contract.DYNAMIC_PREFILL_CHUNK) for _, c in chunks)
                assert sum(c for _, c in chunks) == n
            elif n >= length:  # fixed graphs: every call full, the last one moved back, not padded
                assert all(c == length for _, c in chunks)
                assert len(chunks) == -(-n // length)
            else:
                assert chunks == [(0, n)]


# --- the sampler ---------------------------------------------------------------------------------

LOGITS = np.array([2.0, 1.5, 1.0, 0.2, -0.5, -3.0, 0.9, 1.2])


def _frequencies(params: SamplingParams, draws: int = 40_000) -> np.ndarray:
    s = Sampler(params)
    counts = np.bincount([s(LOGITS) for _ in range(draws)], minlength=len(LOGITS))
    return counts / draws


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_greedy_is_the_argmax():
    assert Sampler(SamplingParams())(LOGITS) == 0
    assert Sampler(SamplingParams(temperature=1.0, top_k=1))(LOGITS) == 0


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_samples_softmax_of_scaled_logits(temperature):
    want = _softmax(LOGITS / temperature)
    got = _frequencies(SamplingParams(temperature=temperature, seed=1))
    assert np.abs(got - want).max() < 0.012, (got, want)


def test_top_k_renormalizes_over_the_k_largest():
    want = np.zeros_like(LOGITS)
    top = np.argsort(-LOGITS)[:3]
    want[top] = _softmax(LOGITS[top])
    got = _frequencies(SamplingParams(temperature=1.0, top_k=3, seed=2))
    assert np.abs(got - want).max() < 0.012 and got[want == 0].sum() == 0


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = _softmax(LOGITS)
    order = np.argsort(-probs)
    cum = np.cumsum(probs[order])
    keep = order[:int(np.argmax(cum >= 0.8)) + 1]
    want = np.zeros_like(probs)
    want[keep] = probs[keep] / probs[keep].sum()
    got = _frequencies(SamplingParams(temperature=1.0, top_p=0.8, seed=3))
    assert np.abs(got - want).max() < 0.012 and got[want == 0].sum() == 0


def test_top_k_beyond_the_vocabulary_keeps_every_token():
    got = _frequencies(SamplingParams(temperature=1.0, top_k=1000, seed=4), draws=20_000)
    assert np.abs(got - _softmax(LOGITS)).max() < 0.015


def test_the_same_seed_gives_the_same_tokens():
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=7)
    a, b = Sampler(params), Sampler(params)
    assert [a(LOGITS) for _ in range(50)] == [b(LOGITS) for _ in range(50)]


@pytest.mark.parametrize("params,needle", [
    (SamplingParams(temperature=-1), "--temperature"), (SamplingParams(temperature=float("nan")), "--temperature"),
    (SamplingParams(top_k=-1), "--top-k"), (SamplingParams(top_p=0), "--top-p"), (SamplingParams(seed=-1), "--seed"),
])
def test_bad_sampling_values_are_refused(params, needle):
    from edgepack.errors import EdgepackError

    with pytest.raises(EdgepackError, match=needle):
        params.validate()


# --- the hot-row cache ---------------------------------------------------------------------------

def test_hot_rows_evict_the_least_recently_used():
    """Against an LRU written from its definition, over a random access pattern."""
    cols = 4
    cache = HotRows(budget_bytes=5 * 4 * cols, cols=cols)
    assert cache.capacity == 5
    ref: collections.OrderedDict[int, None] = collections.OrderedDict()
    hits = misses = 0
    rng = np.random.default_rng(0)
    for row in rng.integers(0, 12, 500).tolist():
        got = cache.get(row)
        if row in ref:
            hits += 1
            ref.move_to_end(row)
            assert got is not None and got[0, 0] == row  # the slot still holds that row's values
        else:
            misses += 1
            assert got is None
            if len(ref) == 5:
                ref.popitem(last=False)
            ref[row] = None
            cache.put(row)[:] = row
    assert (cache.hits, cache.misses) == (hits, misses)
    assert list(cache.slots) == list(ref)


def test_threads_from_the_environment(monkeypatch):
    from edgepack.errors import EdgepackError
    from edgepack.system import THREADS_ENV, default_threads

    monkeypatch.setenv(THREADS_ENV, "3")
    assert default_threads() == 3
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(EdgepackError, match=THREADS_ENV):
            default_threads()
    monkeypatch.delenv(THREADS_ENV)
    assert default_threads() == len(os.sched_getaffinity(0))
