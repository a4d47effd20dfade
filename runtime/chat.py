"""Chat prompts: a bundle's Jinja chat template, rendered as untrusted data, and tokenized so that a
user's text can never become control tokens.

- The template runs in Jinja's immutable sandbox (no attribute access to Python internals, no
  mutation), with bounds the sandbox lacks: `range()` hands out at most MAX_RANGE_ITEMS items per
  render in all, `*` and `**` cannot build strings, lists or numbers past MAX_OUTPUT_CHARS, and the
  rendered text stops at MAX_OUTPUT_CHARS. Whatever goes wrong is one line (EdgepackError).
- A message's text that contains a special token's spelling (`<start_of_turn>`, `<bos>` ...) is
  tokenized as plain text, as chat servers do, so a user cannot fake a turn: the template's own
  text is parsed for special tokens, the messages' text is not.
"""

from __future__ import annotations

import operator

from edgepack.errors import EdgepackError

MAX_OUTPUT_CHARS = 4 << 20
MAX_RANGE_ITEMS = 1_000_000
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use marks around each message's text while rendering


def render(template: str, messages: list[dict]) -> str:
    """The template's text for `messages`, with a generation prompt."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    budget = [MAX_RANGE_ITEMS]

    def bounded_range(*args):
        r = range(*args)
        budget[0] -= len(r)
        if budget[0] < 0:
            raise EdgepackError(f"chat template: loops over more than {MAX_RANGE_ITEMS:,} items")
        return r

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, op, left, right):
            if op == "*" and any(isinstance(x, (str, list, tuple)) for x in (left, right)):
                n = right if isinstance(left, (str, list, tuple)) else left
                size = len(left if isinstance(left, (str, list, tuple)) else right)
                if isinstance(n, int) and n * size > MAX_OUTPUT_CHARS:
                    raise EdgepackError("chat template: builds a value too large")
            if op == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise EdgepackError("chat template: builds a value too large")
            return {"*": operator.mul, "**": operator.pow}[op](left, right)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _template_error
    env.globals["range"] = bounded_range
    try:
        pieces, size = [], 0
        for piece in env.from_string(template).generate(messages=messages, bos_token="<bos>", eos_token="<eos>",
                                                          add_generation_prompt=True):
            size += len(piece)
            if size > MAX_OUTPUT_CHARS:
                raise EdgepackError(f"chat template: renders more than {MAX_OUTPUT_CHARS:,} characters")
            pieces.append(piece)
        return "".join(pieces)
    except EdgepackError:
        raise
    except (TemplateError, RecursionError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as e:
        raise EdgepackError(f"chat template: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def encode(tokenizer, template: str, messages: list[dict], audio=None) -> list[int]:
    """Token ids of the rendered chat: the template's text with its special tokens, each message's
    text as plain text (a `<start_of_turn>` typed by a user stays text). With `audio` (the
    manifest's), an audio_prompt.MARK in a message is a clip's place (audio_prompt.expand)."""
    from edgepack.runtime.audio_prompt import expand

    if not any(s in str(m.get("content", "")) for m in messages for s in tokenizer.specials):
        text = render(template, messages)
        return expand(tokenizer.encode, text, audio) if audio else tokenizer.encode(text)
    marked = [m | {"content": f"{_OPEN}{m.get('content', '')}{_CLOSE}"} for m in messages]
    text = render(template, marked)
    ids, rest = [], text
    plain = lambda x: tokenizer.encode(x, specials_as_text=True)  # noqa: E731
    while _OPEN in rest:
        head, _, tail = rest.partition(_OPEN)
        body, _, rest = tail.partition(_CLOSE)
        ids += tokenizer.encode(head)
        ids += expand(plain, body, audio) if audio else plain(body)
    return ids + tokenizer.encode(rest)


def _template_error(message: str):
    raise EdgepackError(f"chat template: {message}")
