"""The HTTP side of `edgepack serve` (serve.py): routing, authentication, rate limits, request
bodies, JSON and server-sent-event responses, one log line per request."""

from __future__ import annotations

import hmac
import json
import math
import select
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler

from edgepack import openai_api as api
from edgepack.errors import EdgepackError
from edgepack.openai_api import ApiError


class Handler(BaseHTTPRequestHandler):
    app = None  # the Server, set by serve._handler
    protocol_version = "HTTP/1.1"
    server_version = "edgepack"

    def log_message(self, format, *args) -> None:  # noqa: A002 (http.server's name)
        pass  # one line per request, written by _done, without the request line's query text

    # -- routing -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route({"/health": self._health, "/v1/models": self._models, "/metrics": self._metrics})

    def do_POST(self) -> None:
        self._route({"/v1/chat/completions": lambda: self._complete(chat=True),
                     "/v1/completions": lambda: self._complete(chat=False)})

    def _route(self, routes: dict) -> None:
        self.t0, self.status, self.tokens = time.monotonic(), 500, ""
        path = self.path.split("?", 1)[0]
        self.endpoint = path if path in routes else "other"
        try:
            if path not in routes:
                raise ApiError(404, f"no route {self.command} {path}", kind="not_found_error")
            if path not in ("/health",):
                self._authorize()
            routes[path]()
        except ApiError as e:
            self._json(e.status, e.body(), e.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.status = 499  # the client left (nginx's code for it)
        except EdgepackError as e:  # the runtime refusing this request's input
            self._json(400, ApiError(400, str(e)).body())
        except Exception as e:  # noqa: BLE001 - a bug must not take the server down or leak a trace
            self.app.metrics.reject("internal")
            self._json(500, ApiError(500, f"internal error: {type(e).__name__}", kind="server_error").body())
        finally:
            self._done()

    def _done(self) -> None:
        elapsed = time.monotonic() - self.t0
        self.app.metrics.request(self.endpoint, self.status, elapsed)
        if self.endpoint != "/metrics":
            log(f"{self.client_address[0]} {self.command} {self.endpoint} {self.status} {elapsed * 1e3:.0f} ms"
                f"{self.tokens}")

    # -- checks --------------------------------------------------------------------------------

    def _authorize(self) -> None:
        keys, key = self.app.options.api_keys, self.client_address[0]
        if keys:
            given = self.headers.get("Authorization", "")
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            # every key compared, in constant time: neither a key's content nor its place leaks
            if not sum(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
                self.app.metrics.reject("unauthorized")
                raise ApiError(401, "a valid API key is required (Authorization: Bearer <key>)",
                               kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})
            key = token
        if self.app.limiter and self.endpoint.startswith("/v1/") and (wait := self.app.limiter.check(key)):
            self.app.metrics.reject("rate_limited")
            raise ApiError(429, f"rate limit of {self.app.options.rate_limit} requests per minute reached",
                           kind="rate_limit_error", headers={"Retry-After": str(math.ceil(wait))})

    def _body(self) -> object:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "a Content-Length header is required") from None
        if length > self.app.options.max_body_bytes or length < 0:
            self.close_connection = True  # the body is not read: the connection can't go on
            self.app.metrics.reject("too_large")
            raise ApiError(413, f"the request body is {length} bytes; the limit is {self.app.options.max_body_bytes}")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ApiError(400, f"the request body is not JSON: {str(e)[:100]}") from None

    def _ready(self):
        if self.app.generator is None:
            why = self.app.load_error or "the bundle is still loading"
            raise ApiError(503, why, kind="server_error", headers={"Retry-After": "1"})
        return self.app.generator

    # -- endpoints -----------------------------------------------------------------------------

    def _health(self) -> None:
        if self.app.generator is None:
            status = "error" if self.app.load_error else "loading"
            self._json(503, {"status": status} | ({"error": self.app.load_error} if self.app.load_error else {}))
        else:
            self._json(200, {"status": "ok"})

    def _models(self) -> None:
        self._json(200, {"object": "list", "data": [{"id": self.app.model_id, "object": "model",
                                                     "created": 0, "owned_by": "edgepack"}]})

    def _metrics(self) -> None:
        body, kind = self.app.metrics.render()
        self._send(200, body, kind)

    def _complete(self, chat: bool) -> None:
        req = api.parse(self._body(), chat)
        gen = self._ready()
        ids = self.app.prompt_ids(req)
        if len(ids) >= gen.max_context:
            self.app.metrics.reject("too_long")
            raise ApiError(400, f"the prompt is {len(ids)} tokens; the model's context is {gen.max_context} "
                                "(and at least one token must be generated)", "messages" if chat else "prompt",
                           kind="context_length_exceeded")
        self.app.admit()
        try:
            deadline = time.monotonic() + self.app.options.timeout_s
            if not self.app.engine_lock.acquire(timeout=self.app.options.timeout_s):
                self.app.metrics.reject("timeout")
                raise ApiError(503, "timed out waiting for the engine", kind="server_busy",
                               headers={"Retry-After": "1"})
            try:
                self.app.metrics.running(+1)
                run = self.app.run(req, ids, deadline, client_gone(self.connection))
                if req.stream:
                    self._stream(req, run, chat)
                else:
                    self._whole(req, run, chat)
                self.app.metrics.generated(gen.last_run, len(ids))
                stats = gen.last_run
                self.tokens = f" {stats.prompt_tokens}+{stats.new_tokens} tokens ({stats.reused_tokens} reused)"
                if self.app.options.log_text:
                    self.tokens += f" output {run.text!r}"
            finally:
                self.app.metrics.running(-1)
                self.app.engine_lock.release()
        finally:
            self.app.release()

    def _choice(self, req: api.Request, run, chat: bool) -> dict:
        if not chat:
            return {"index": 0, "text": run.text, "logprobs": None, "finish_reason": run.finish}
        from edgepack.runtime.tools import parse_calls

        text, calls = parse_calls(run.text, req.tools if req.tool_choice != "none" else None)
        message = {"role": "assistant", "content": text or None if calls else run.text}
        if calls:
            message["tool_calls"] = [{"id": api.new_id("call"), "type": "function", "function": {
                "name": c.name, "arguments": json.dumps(c.arguments)}} for c in calls]
        return {"index": 0, "message": message, "logprobs": None,
                "finish_reason": "tool_calls" if calls else run.finish}

    def _whole(self, req: api.Request, run, chat: bool) -> None:
        for _ in run.pieces():
            pass
        stats = self.app.generator.last_run
        body = api.envelope("chat.completion" if chat else "text_completion", api.new_id("chatcmpl" if chat else "cmpl"),
                            self.app.model_id)
        body |= {"choices": [self._choice(req, run, chat)], "usage": api.usage(stats.prompt_tokens, stats.new_tokens),
                 "timings": api.timings(stats)}
        self._json(200, body)

    def _stream(self, req: api.Request, run, chat: bool) -> None:
        """Server-sent events: a chunk per piece of text, the finish, the usage if asked, [DONE].
        With tools offered the text is held to the end, where it is a call or text."""
        self.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        head = api.envelope("chat.completion.chunk" if chat else "text_completion", api.new_id("chatcmpl"),
                            self.app.model_id)

        def event(choices: list, **extra) -> None:
            self.wfile.write(b"data: " + json.dumps(head | {"choices": choices} | extra).encode() + b"\n\n")
            self.wfile.flush()

        def delta(d: dict, finish=None) -> dict:
            return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish} if chat else \
                {"index": 0, "text": d.get("content", ""), "logprobs": None, "finish_reason": finish}

        if chat:
            event([delta({"role": "assistant", "content": ""})])
        hold = chat and req.tools and req.tool_choice != "none"
        try:
            for piece in run.pieces():
                if not hold:
                    event([delta({"content": piece})])
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as e:  # noqa: BLE001 - the status is sent: the error goes in the stream, as OpenAI's do
            self.app.metrics.reject("internal")
            message = str(e) if isinstance(e, EdgepackError) else f"internal error: {type(e).__name__}"
            self.wfile.write(b"data: " + json.dumps(ApiError(500, message, kind="server_error").body()).encode()
                             + b"\n\ndata: [DONE]\n\n")
            return
        if hold:
            choice = self._choice(req, run, chat)
            message = choice["message"]
            if "tool_calls" in message:
                calls = [c | {"index": i} for i, c in enumerate(message["tool_calls"])]
                event([delta({"tool_calls": calls} | ({"content": message["content"]} if message["content"] else {}))])
            else:
                event([delta({"content": message["content"]})])
            finish = choice["finish_reason"]
        else:
            finish = run.finish
        event([delta({}, finish)])
        stats = self.app.generator.last_run
        if req.include_usage:
            event([], usage=api.usage(stats.prompt_tokens, stats.new_tokens), timings=api.timings(stats))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    # -- responses -----------------------------------------------------------------------------

    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(self, status: int, body: bytes, kind: str, headers: dict | None = None) -> None:
        self.status = status
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


def client_gone(sock: socket.socket):
    """A check that the client closed its side (a readable socket with nothing to read)."""
    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True
    return gone


def log(message: str) -> None:
    print(f"edgepack serve: {message}", file=sys.stderr, flush=True)
