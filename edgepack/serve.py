"""`edgepack serve`: an OpenAI-compatible HTTP server on edgepack's runtime, light enough for a Pi.

    from edgepack.serve import ServeOptions, Server
    server = Server("bundles/gemma-3-270m-int4", ServeOptions(port=8080))
    server.serve_forever()          # or server.start() for a background thread, server.close()

Endpoints: POST /v1/chat/completions (tools, streaming), POST /v1/completions, GET /v1/models,
GET /health (503 while the bundle loads), GET /metrics (Prometheus).

The standard library's ThreadingHTTPServer, as mlx_lm.server and `litert-lm serve`: no framework
to install on a board, a thread per connection, and one engine that runs one request at a time
(requests wait in a bounded queue). A prompt that starts with the previous request's tokens (a
chat's next turn) prefills only its new tokens (Engine.reusable).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

from edgepack import openai_api as api
from edgepack.errors import EdgepackError
from edgepack.openai_api import ApiError
from edgepack.serve_http import Handler, log
from edgepack.serve_metrics import Metrics


@dataclasses.dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()  # bearer tokens; none: no authentication
    rate_limit: int | None = None  # requests per minute per key (per client address without keys)
    max_queue: int = 8  # requests waiting for the engine, besides the one it runs
    timeout_s: float = 600.0  # a request's whole life: waiting, prefill and decode
    max_body_bytes: int = 1 << 20
    threads: int | None = None
    log_text: bool = False  # prompts and outputs in the log (off: counts only)


def read_api_keys(path: Path) -> tuple[str, ...]:
    """One key per line; blank lines and '#' comments skipped. The file must hold at least one."""
    try:
        keys = tuple(line.strip() for line in path.read_text().splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))
    except (OSError, UnicodeDecodeError) as e:
        raise EdgepackError(f"can't read the API key file {path}: {e}") from None
    if not keys:
        raise EdgepackError(f"the API key file {path} holds no key")
    return keys


class RateLimiter:
    """At most `per_minute` requests in any 60 s per key; `check` says how long to wait if over."""

    def __init__(self, per_minute: int):
        self.per_minute, self.seen, self.lock = per_minute, {}, threading.Lock()

    def check(self, key: str) -> float:
        now = time.monotonic()
        with self.lock:
            times = self.seen.setdefault(key, deque())
            while times and times[0] <= now - 60:
                times.popleft()
            if len(times) >= self.per_minute:
                return times[0] + 60 - now
            times.append(now)
            return 0.0


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # connections the kernel holds before accept: bursts get a 503, not a reset


class Server:
    def __init__(self, bundle: str | Path, options: ServeOptions = ServeOptions()):
        self.options, self.bundle_path = options, Path(bundle)
        self.model_id = self.bundle_path.resolve().name
        self.generator = None
        self.load_error: str | None = None
        self.engine_lock = threading.Lock()
        # the tokenizers library (tokenizer.LibraryTokenizer) has a switch for special tokens: one at a time
        self.tokenizer_lock = threading.Lock()
        self.admitted, self.admit_lock = 0, threading.Lock()  # waiting + running
        self.limiter = RateLimiter(options.rate_limit) if options.rate_limit else None
        self.metrics = Metrics()
        self.httpd = _HTTPServer((options.host, options.port), _handler(self))  # bound: the port is taken

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def _load(self) -> None:
        from edgepack.runtime import Generator

        try:
            self.generator = Generator(self.bundle_path, threads=self.options.threads)
            self.metrics.watch(self.generator)
            log(f"ready: {self.model_id} on http://{self.address[0]}:{self.address[1]}/v1")
        except EdgepackError as e:
            self.load_error = str(e)
            log(f"error: {e}")

    def serve_forever(self) -> None:
        """Loads the bundle in the background and answers requests (/health says 503 until loaded)."""
        threading.Thread(target=self._load, name="edgepack-load", daemon=True).start()
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> "Server":
        threading.Thread(target=self.serve_forever, name="edgepack-serve", daemon=True).start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- one request ---------------------------------------------------------------------------

    def admit(self) -> None:
        with self.admit_lock:
            if self.admitted >= self.options.max_queue + 1:
                self.metrics.reject("queue_full")
                raise ApiError(503, f"the server is busy ({self.options.max_queue} requests waiting); retry later",
                               kind="server_busy", headers={"Retry-After": "1"})
            self.admitted += 1
            self.metrics.queue(self.admitted)

    def release(self) -> None:
        with self.admit_lock:
            self.admitted -= 1
            self.metrics.queue(self.admitted)

    def prompt_ids(self, req: api.Request) -> list[int]:
        from edgepack.runtime import chat, tools

        gen = self.generator
        if req.prompt is not None:
            with self.tokenizer_lock:
                return gen.encode(req.prompt)
        if not gen.chat_template:
            raise ApiError(400, "this bundle has no chat template (a base model): use /v1/completions")
        try:
            messages = tools.with_tools(req.messages, req.tools, req.tool_choice)
            with self.tokenizer_lock:
                return chat.encode(gen.tokenizer, gen.chat_template, messages)
        except EdgepackError as e:
            raise ApiError(400, str(e), "messages") from None

    def run(self, req: api.Request, ids: list[int], deadline: float, gone) -> "Generation":
        return Generation(self.generator, req, ids, deadline, gone)


class Generation:
    """One request's generation: `pieces()` yields its text as it comes, stopped by a stop token,
    a stop string, max_tokens, the context, the deadline or a client gone; then `finish` says
    which in OpenAI's words ("stop" or "length") and `text` holds it all."""

    def __init__(self, gen, req: api.Request, ids: list[int], deadline: float, gone):
        self.gen, self.req, self.ids, self.deadline, self.gone = gen, req, ids, deadline, gone
        self.finish, self.text = "length", ""

    def pieces(self) -> Iterator[str]:
        gen, stops = self.gen, self.req.stop
        budget = min(self.req.max_tokens or gen.max_context, gen.max_context - len(self.ids) + 1)
        hold = max((len(s) for s in stops), default=1) - 1  # text a stop string may still claim
        out: list[int] = []
        gen.reuse_cache = self.req.cache_prompt
        for token in gen.generate_ids(self.ids, budget, self.req.sampling):
            out.append(token)
            text = gen.tokenizer.decode(out, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                self.finish = "stop"
                yield from self._show(text[:cut])
                return
            if not text.endswith("\ufffd"):  # a character split across tokens waits for its end
                yield from self._show(text[:max(len(text) - hold, 0)])
            if time.monotonic() > self.deadline or self.gone():
                break
        else:
            if len(out) < budget and not gen.hit_context_limit:
                self.finish = "stop"  # a stop token
        yield from self._show(gen.tokenizer.decode(out, skip_special_tokens=True))

    def _show(self, upto: str) -> Iterator[str]:
        if len(upto) > len(self.text):
            piece, self.text = upto[len(self.text):], upto
            yield piece


def _handler(server: Server):
    return type("Handler", (Handler,), {"app": server})
