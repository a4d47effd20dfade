"""Function calling for Gemma 3 / 3n, which has no tool tokens: tool definitions go into the prompt,
the model answers with a call in Python syntax inside a fenced `tool_code` block, and tool results
come back in a fenced `tool_output` block (Google's Gemma function-calling guide; the same fences
LiteRT-LM's Gemma 3 conversation code writes and parses).

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}]
    messages = with_tools(messages, tools)          # OpenAI-style messages, ready for the template
    text, calls = parse_calls(model_output, tools)  # calls: [ToolCall(name, arguments)]

Parsing never runs the model's text: `ast` reads the call, `ast.literal_eval` its arguments. Output
that does not parse, or names a function that was not offered, stays text.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re

from edgepack.errors import EdgepackError

CALL_OPEN, CALL_CLOSE = "```tool_code\n", "\n```"
OUTPUT_OPEN, OUTPUT_CLOSE = "```tool_output\n", "\n```"
_BLOCK = re.compile(r"```tool_code\n(.*?)\n```", re.DOTALL)
_PY_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "array": "list",
             "object": "dict", "null": "None"}

INSTRUCTIONS = (
    "You have access to the functions below. To call one, answer with only a tool_code block "
    "holding the call in Python syntax, for example:\n"
    "```tool_code\nprint(get_weather(city=\"Paris\"))\n```\n"
    "The result comes back in a tool_output block. If no function fits, answer normally.\n")


@dataclasses.dataclass
class ToolCall:
    name: str
    arguments: dict


def function_stub(fn: dict) -> str:
    """One tool as a Python stub with a Google-style docstring: how the Gemma guide shows tools."""
    params = fn.get("parameters") or {}
    props, required = params.get("properties") or {}, set(params.get("required") or [])
    args = []
    for name, spec in sorted(props.items(), key=lambda kv: kv[0] not in required):  # required first
        kind = spec.get("type", "")
        kind = " | ".join(_PY_TYPES.get(k, "object") for k in kind) if isinstance(kind, list) else \
            _PY_TYPES.get(kind, "object")
        args.append(f"{name}: {kind}" + ("" if name in required else " = None"))
    doc = [fn.get("description", "").strip() or fn["name"]]
    described = [(n, s) for n, s in props.items() if s.get("description") or s.get("enum")]
    if described:
        doc += ["", "Args:"]
        for n, s in described:
            enum = f"One of: {', '.join(map(repr, s['enum']))}." if s.get("enum") else ""
            doc.append(f"  {n}: " + " ".join(filter(None, [s.get("description", "").strip(), enum])))
    body = "\n".join(("    " + line).rstrip() for line in doc)
    return f"def {fn['name']}({', '.join(args)}) -> dict:\n    \"\"\"{body.lstrip()}\n    \"\"\"\n"


def tools_prompt(tools: list[dict]) -> str:
    """The instructions and every tool's stub, in a python block."""
    stubs = "\n".join(function_stub(t["function"]) for t in tools)
    return f"{INSTRUCTIONS}\n```python\n{stubs}```\n"


def call_text(call: ToolCall) -> str:
    """A call as the model writes it (an assistant turn that called a tool, sent back by a client)."""
    args = ", ".join(f"{k}={v!r}" for k, v in call.arguments.items())
    return f"{CALL_OPEN}print({call.name}({args})){CALL_CLOSE}"


def output_text(content: str) -> str:
    """A tool's result as the model reads it: a JSON result shown as a Python literal."""
    try:
        value = repr(json.loads(content))
    except (json.JSONDecodeError, TypeError):
        value = content
    return f"{OUTPUT_OPEN}{value}{OUTPUT_CLOSE}"


def with_tools(messages: list[dict], tools: list[dict] | None, choice: str | dict | None = "auto") -> list[dict]:
    """OpenAI-style messages (system, user, assistant with tool_calls, tool) as the user / model
    turns Gemma's template takes: the tools' prompt opens the first user turn, calls and results
    are written in their fences, and consecutive turns of one role are joined (Gemma's templates
    want them to alternate). `choice`: "auto", "none" (no tools offered) or a named function
    ({"type": "function", "function": {"name": ...}}: only it is offered, and must be called)."""
    if tools and choice != "none":
        if isinstance(choice, dict):
            name = choice["function"]["name"]
            tools = [t for t in tools if t["function"]["name"] == name]
            if not tools:
                raise EdgepackError(f"tool_choice names {name!r}, which is not one of the tools")
            preamble = tools_prompt(tools) + f"Call {name} now.\n"
        else:
            preamble = tools_prompt(tools)
    else:
        preamble = ""
    out: list[dict] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "tool":
            role, content = "user", output_text(content)
        elif role == "assistant" and m.get("tool_calls"):
            calls = [ToolCall(c["function"]["name"], json.loads(c["function"]["arguments"] or "{}"))
                     for c in m["tool_calls"]]
            content = "\n".join([content] * bool(content) + [call_text(c) for c in calls])
        if out and out[-1]["role"] == role and role != "system":
            out[-1] = {"role": role, "content": out[-1]["content"] + "\n\n" + content}
        else:
            out.append({"role": role, "content": content})
    if preamble:
        first = next((i for i, m in enumerate(out) if m["role"] == "user"), None)
        if first is None:
            out.append({"role": "user", "content": preamble})
        else:
            out[first] = {"role": "user", "content": preamble + "\n" + out[first]["content"]}
    return out


def parse_calls(text: str, tools: list[dict] | None) -> tuple[str, list[ToolCall]]:
    """(the text outside the calls, the calls) when every tool_code block in `text` is a call to
    an offered function with literal arguments; otherwise (text, []): the answer stays text."""
    names = {t["function"]["name"]: t["function"] for t in tools or []}
    blocks = list(_BLOCK.finditer(text))
    if not names or not blocks:
        return text, []
    calls = []
    for block in blocks:
        for line in filter(str.strip, block.group(1).splitlines()):
            call = _parse_call(line.strip(), names)
            if call is None:
                return text, []
            calls.append(call)
    rest = _BLOCK.sub("", text).strip()
    return rest, calls


def _parse_call(line: str, functions: dict) -> ToolCall | None:
    try:
        node = ast.parse(line, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print" \
            and len(node.args) == 1 and not node.keywords:
        node = node.args[0]  # print(call): the guide's form; a bare call is accepted too
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "default_api":
        name = func.attr
    elif isinstance(func, ast.Name):
        name = func.id
    else:
        return None
    if name not in functions:
        return None
    order = list(((functions[name].get("parameters") or {}).get("properties") or {}))
    if len(node.args) > len(order) or any(k.arg is None for k in node.keywords):
        return None
    try:
        args = {order[i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
        args |= {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None
    try:
        json.dumps(args)  # tuples, sets, bytes, complex: not JSON, so not a call a client can take
    except (TypeError, ValueError):
        return None
    return ToolCall(name, args)
