"""Hostile values, where to put them in a manifest, and edgepack's CLI run in this process: the
fuzz suite's (test_hostile.py) and the Android core's cross-check against the Python side
(test_android_core.py)."""

from __future__ import annotations

import contextlib
import io
import signal

from edgepack.cli import main


HOSTILE = [None, True, False, -1, 0, 2**63, 1.5, float("nan"), "", "x", "../../etc/passwd", "/etc/shadow",
           "\x1b[31m", [], [-1], {}, {"a": 1}, "0" * 64]


def manifest_places(value, prefix=()):
    """Every place in a JSON document: (key path, value)."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            if prefix == () and k in ("chat_template",):
                continue
            yield from manifest_places(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield from manifest_places(v, prefix + (i,))


def mutate(doc, path, how, new):
    if not path:
        return new
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if how == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return doc


def cli(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """`edgepack ARGS` in this process: exit code, stdout, stderr. An exception other than the
    one-line errors escapes and fails the test; so does running past `timeout` (a hang)."""
    out, err = io.StringIO(), io.StringIO()

    def hung(*_):
        raise TimeoutError(f"edgepack {' '.join(args)[:200]} ran past {timeout} s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(int(timeout))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's own usage errors
                code = e.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, out.getvalue(), err.getvalue()
