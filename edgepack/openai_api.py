"""The OpenAI API's requests, read and checked as untrusted input, and its response bodies.

Every malformed field is an ApiError: a status and OpenAI's error body
(`{"error": {"message", "type", "param", "code"}}`), never a server error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid

from edgepack.runtime.sampling import SamplingParams

ROLES = {"system", "developer", "user", "assistant", "tool"}
MAX_STOPS = 4  # as OpenAI


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclasses.dataclass
class Request:
    """What both endpoints share; `messages` for chat, `prompt` for completions."""
    max_tokens: int
    sampling: SamplingParams
    stop: list[str]
    stream: bool
    include_usage: bool
    messages: list[dict] | None = None
    prompt: str | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict = "auto"
    cache_prompt: bool = True  # llama-server's name: reuse the K/V a previous request left (Engine.reusable)


def _field(body: dict, name: str, kinds, default=None, check=None, what: str = ""):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ApiError(400, f"'{name}' must be {what}", name)
    if not isinstance(value, kinds) or (check and not check(value)):
        raise ApiError(400, f"'{name}' must be {what}", name)
    return value


def _text(content, where: str) -> str:
    """A message's content: a string, or a list of text parts (the only kind a text model reads)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in content):
            raise ApiError(400, f"{where}: only text parts are supported by this model", where)
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"{where} must be a string or a list of text parts", where)


def _tools(body: dict) -> tuple[list[dict] | None, str | dict]:
    tools = _field(body, "tools", list, None, what="a list of tools")
    choice = body.get("tool_choice", "auto")
    for i, t in enumerate(tools or []):
        fn = t.get("function") if isinstance(t, dict) else None
        if not (isinstance(t, dict) and t.get("type") == "function" and isinstance(fn, dict)
                and isinstance(fn.get("name"), str) and fn["name"].isidentifier()):
            raise ApiError(400, f"tools[{i}] must be {{'type': 'function', 'function': {{'name': <identifier>, ...}}}}",
                           f"tools[{i}]")
        params = fn.get("parameters", {})
        if not isinstance(params, dict) or not isinstance(params.get("properties", {}), dict) or \
                not all(isinstance(k, str) and k.isidentifier() for k in params.get("properties", {})):
            raise ApiError(400, f"tools[{i}].function.parameters must be a JSON schema object whose property "
                                "names are identifiers", f"tools[{i}]")
    if choice in ("auto", "none", "required"):
        return tools, "auto" if choice == "required" else choice
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str) or name not in {t["function"]["name"] for t in tools or []}:
        raise ApiError(400, "'tool_choice' must be 'none', 'auto', 'required' or a function among 'tools'",
                       "tool_choice")
    return tools, choice


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(sorted(ROLES))}", where)
        role = "system" if m["role"] == "developer" else m["role"]
        calls = m.get("tool_calls") if role == "assistant" else None
        if calls is not None:
            if not isinstance(calls, list) or not all(
                    isinstance(c, dict) and isinstance(c.get("function"), dict)
                    and isinstance(c["function"].get("name"), str)
                    and isinstance(c["function"].get("arguments", "{}"), str) for c in calls):
                raise ApiError(400, f"{where}.tool_calls is malformed", where)
            for c in calls:
                try:
                    if not isinstance(json.loads(c["function"].get("arguments") or "{}"), dict):
                        raise ValueError
                except (ValueError, RecursionError):
                    raise ApiError(400, f"{where}.tool_calls: arguments must be a JSON object", where) from None
        content = m.get("content")
        text = "" if content is None and (calls or role == "assistant") else _text(content, f"{where}.content")
        out.append({"role": role, "content": text} | ({"tool_calls": calls} if calls else {}))
    return out


def parse(body: object, chat: bool) -> Request:
    """A chat completion's or a completion's request body, checked field by field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if _field(body, "n", int, 1, what="1") != 1:
        raise ApiError(400, "only n=1 is supported", "n")
    default = None if chat else 16  # OpenAI's completions default
    max_tokens = _field(body, "max_completion_tokens", int, None, lambda v: v >= 1, "an integer >= 1") \
        or _field(body, "max_tokens", int, default, lambda v: v >= 1, "an integer >= 1")
    finite = lambda v: math.isfinite(v)  # noqa: E731
    sampling = SamplingParams(
        temperature=float(_field(body, "temperature", (int, float), 1.0, lambda v: finite(v) and 0 <= v <= 2,
                                 "a number from 0 to 2")),
        top_p=float(_field(body, "top_p", (int, float), 1.0, lambda v: finite(v) and 0 < v <= 1,
                           "a number in (0, 1]")),
        top_k=_field(body, "top_k", int, 0, lambda v: v >= 0, "an integer >= 0"),
        seed=_field(body, "seed", int, None, lambda v: 0 <= v < 2**63, "an integer from 0 to 2**63 - 1"))
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"'stop' must be a string or a list of up to {MAX_STOPS} non-empty strings", "stop")
    stream = _field(body, "stream", bool, False, what="a boolean")
    options = _field(body, "stream_options", dict, {}, what="an object")
    req = Request(max_tokens=max_tokens, sampling=sampling, stop=stop, stream=stream,
                  include_usage=bool(stream and options.get("include_usage")),
                  cache_prompt=_field(body, "cache_prompt", bool, True, what="a boolean"))
    if chat:
        req.messages = _messages(body)
        req.tools, req.tool_choice = _tools(body)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "'prompt' must be a non-empty string", "prompt")
        req.prompt = prompt
    return req


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def timings(stats) -> dict:
    """llama-server's `timings`: the prefill (tokens prefilled, their time) and the decode."""
    prefilled = stats.prompt_tokens - stats.reused_tokens
    decoded = max(stats.new_tokens - 1, 0)
    return {"cache_n": stats.reused_tokens, "prompt_n": prefilled, "prompt_ms": stats.first_token_s * 1e3,
            "prompt_per_second": prefilled / stats.first_token_s if stats.first_token_s > 0 else None,
            "predicted_n": stats.new_tokens, "predicted_ms": (stats.first_token_s + stats.decode_s) * 1e3,
            "predicted_per_second": decoded / stats.decode_s if decoded and stats.decode_s > 0 else None}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def envelope(kind: str, rid: str, model: str) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model}
