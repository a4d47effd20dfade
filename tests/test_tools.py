"""Function calling (runtime/tools.py): tools rendered into the prompt and calls parsed back, against
strings written by hand from Google's Gemma function-calling guide (Python stubs with docstrings;
calls in a ```tool_code block, `print(...)` around a Python call) and LiteRT-LM's Gemma 3 call
pattern `print\\((?:default_api\\.)?(.+\\(.*\\))\\)`."""

from __future__ import annotations

import json
import re

import pytest

from edgepack.errors import EdgepackError
from edgepack.runtime.tools import ToolCall, function_stub, parse_calls, with_tools

WEATHER = {"type": "function", "function": {
    "name": "get_current_weather",
    "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    }, "required": ["location"]},
}}
NEWS = {"type": "function", "function": {"name": "get_top_news", "parameters": {
    "type": "object", "properties": {"count": {"type": "integer"}}}}}
LITERT_LM_CALL = re.compile(r"print\((?:default_api\.)?(.+\(.*\))\)")


def test_a_tool_renders_as_a_python_stub():
    assert function_stub(WEATHER["function"]) == (
        'def get_current_weather(location: str, unit: str = None) -> dict:\n'
        '    """Get the current weather in a given location\n'
        '\n'
        '    Args:\n'
        '      location: The city and state, e.g. San Francisco, CA\n'
        "      unit: One of: 'celsius', 'fahrenheit'.\n"
        '    """\n')
    assert function_stub(NEWS["function"]) == (
        'def get_top_news(count: int = None) -> dict:\n'
        '    """get_top_news\n'
        '    """\n')


def test_tools_open_the_first_user_turn_and_results_come_back_as_user_turns():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_0", "type": "function", "function": {
            "name": "get_current_weather", "arguments": '{"location": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temperature": 19}'},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    out = with_tools(messages, [WEATHER])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0] == {"role": "system", "content": "Be brief."}
    assert out[1]["content"].startswith("You have access to the functions below.")
    assert out[1]["content"].endswith("```python\n" + function_stub(WEATHER["function"]) + "```\n\nWeather in Paris?")
    call = "```tool_code\nprint(get_current_weather(location='Paris', unit='celsius'))\n```"
    assert out[2]["content"] == call
    assert LITERT_LM_CALL.search(call).group(1) == "get_current_weather(location='Paris', unit='celsius')"
    assert out[3]["content"] == "```tool_output\n{'temperature': 19}\n```\n\n```tool_output\nsunny\n```"
    assert with_tools(messages[:2], [WEATHER], "none") == messages[:2]


def test_a_named_tool_choice_offers_only_that_tool():
    out = with_tools([{"role": "user", "content": "Hi"}], [WEATHER, NEWS],
                     {"type": "function", "function": {"name": "get_top_news"}})
    assert "def get_top_news" in out[0]["content"] and "get_current_weather(" not in out[0]["content"].split("```python")[1]
    assert "Call get_top_news now." in out[0]["content"]
    with pytest.raises(EdgepackError, match="not one of the tools"):
        with_tools([{"role": "user", "content": "Hi"}], [WEATHER], {"type": "function", "function": {"name": "x"}})


@pytest.mark.parametrize("text,rest,calls", [
    ("```tool_code\nprint(get_current_weather(location=\"Paris\"))\n```", "",
     [ToolCall("get_current_weather", {"location": "Paris"})]),
    ("Let me check.\n```tool_code\nprint(default_api.get_current_weather(location='Oslo', unit='celsius'))\n```",
     "Let me check.", [ToolCall("get_current_weather", {"location": "Oslo", "unit": "celsius"})]),
    ("```tool_code\nget_current_weather('Rome')\nget_top_news(count=3)\n```", "",
     [ToolCall("get_current_weather", {"location": "Rome"}), ToolCall("get_top_news", {"count": 3})]),
])
def test_calls_parse_back(text, rest, calls):
    assert parse_calls(text, [WEATHER, NEWS]) == (rest, calls)


@pytest.mark.parametrize("text", [
    "The weather is fine.",  # no block
    "```tool_code\nprint(get_stock_price(symbol='GOOG'))\n```",  # a function not offered
    "```tool_code\nprint(get_current_weather(location=city))\n```",  # not a literal
    "```tool_code\nprint(get_current_weather(location='Paris')\n```",  # does not parse
    "```tool_code\nprint(__import__('os').system('id'))\n```",  # never run
    "```tool_code\nprint(get_current_weather(**{'location': 'x'}))\n```",
    "```tool_code\nprint(get_current_weather('a', 'b', 'c'))\n```",  # more arguments than parameters
    "```tool_code\nprint(get_current_weather(location={1, 2}))\n```",  # not JSON
    "```tool_code\n" + "[" * 500 + "]" * 500 + "\n```",
])
def test_what_is_not_a_call_stays_text(text):
    assert parse_calls(text, [WEATHER, NEWS]) == (text, [])


def test_arguments_round_trip_through_json():
    text = "```tool_code\nprint(get_current_weather(location='Zürich \"HB\"', unit=None))\n```"
    _, [call] = parse_calls(text, [WEATHER])
    assert json.loads(json.dumps(call.arguments)) == {"location": 'Zürich "HB"', "unit": None}
