"""`edgepack serve`'s /metrics: Prometheus counters, histograms and gauges (prometheus_client, in a
registry of the server's own, so two servers in one process don't share numbers)."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edgepack.profile import sample_memory

SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        p = "edgepack_"
        self.requests = Counter(p + "requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "prompt tokens of completed generations", registry=r)
        self.reused_tokens = Counter(p + "reused_prompt_tokens", "prompt tokens whose K/V a previous request "
                                     "left in the cache (not prefilled again)", registry=r)
        self.generated_tokens = Counter(p + "generated_tokens", "tokens generated", registry=r)
        self.rejections = Counter(p + "rejections", "requests refused, by reason", ["reason"], registry=r)
        self.first_token = Histogram(p + "time_to_first_token_seconds", "prompt in to first token out",
                                     buckets=SECONDS, registry=r)
        self.latency = Histogram(p + "request_latency_seconds", "whole requests, by endpoint", ["endpoint"],
                                 buckets=SECONDS, registry=r)
        self.prefill_rate = Gauge(p + "prefill_tokens_per_second", "the last generation's prompt tokens per "
                                  "second up to its first token", registry=r)
        self.decode_rate = Gauge(p + "decode_tokens_per_second", "the last generation's decode speed", registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "requests admitted and not finished (waiting or running)",
                                 registry=r)
        self.in_flight = Gauge(p + "requests_in_flight", "generations running", registry=r)
        self.rss = Gauge(p + "process_resident_bytes", "this process's resident memory", registry=r)
        self.ple_resident = Gauge(p + "ple_store_resident_bytes", "resident pages of the per-layer embedding "
                                  "store's file (0 without one)", registry=r)
        self.kv_fill = Gauge(p + "kv_cache_fill_ratio", "positions held in the KV cache over its length", registry=r)
        self.generator = None

    def watch(self, generator) -> None:
        self.generator = generator

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def queue(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def running(self, change: int) -> None:
        self.in_flight.inc(change)

    def generated(self, stats, prompt_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.reused_tokens.inc(stats.reused_tokens)
        self.generated_tokens.inc(stats.new_tokens)
        if stats.new_tokens:
            self.first_token.observe(stats.first_token_s)
            self.prefill_rate.set((stats.prompt_tokens - stats.reused_tokens) / max(stats.first_token_s, 1e-9))
        if stats.decode_tok_s:
            self.decode_rate.set(stats.decode_tok_s)

    def render(self) -> tuple[bytes, str]:
        gen = self.generator
        store = gen.engine.stores.get("per_layer_embeddings") if gen is not None else None
        files = {str(Path(store.table.filename).resolve()): "ple"} if store is not None else {}
        sample = sample_memory(os.getpid(), files) or {"rss": 0, "files": {}}
        self.rss.set(sample["rss"])
        self.ple_resident.set(sample["files"].get("ple", 0))
        if gen is not None:
            self.kv_fill.set(len(gen.engine.held) / gen.engine.cache_len)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
