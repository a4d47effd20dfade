"""The product's layers (docs/architecture.md), checked on every import in the tree, those written
inside functions included:

- base (edgepack/: bundle and manifest types, the graph contract, errors, footprint arithmetic,
  OS helpers) imports nothing else of the project;
- converters/ and runtime/ sit on the base and never import each other (a device installs the
  runtime without torch);
- the tools (edgepack/: CLI, profile, bench, eval, report, peers) sit on top of both;
and no module imports, however indirectly, one that imports it back.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"edgepack": "edgepack", "edgepack.converters": "converters", "edgepack.runtime": "runtime"}
BASE = {"edgepack", "edgepack.errors", "edgepack.contract", "edgepack.bundle", "edgepack.system", "edgepack.signing",
        "edgepack.footprint", "edgepack.plan", "edgepack.manifest", "edgepack.tflite_table"}
TOOLS = {"edgepack.cli", "edgepack.profile", "edgepack.bench", "edgepack.evaluate", "edgepack.inspect",
         "edgepack.report", "edgepack.peers", "edgepack.serve", "edgepack.serve_http", "edgepack.serve_metrics",
         "edgepack.openai_api", "edgepack.slices"}
MAY_IMPORT = {"base": {"base"}, "converters": {"base", "converters"}, "runtime": {"base", "runtime"},
              "tools": {"base", "converters", "runtime", "tools"}}


def modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((prefix, *parts))] = path
    return found


def layer(module: str) -> str:
    for name in ("converters", "runtime"):
        if module.startswith(f"edgepack.{name}"):
            return name
    if module in BASE:
        return "base"
    if module in TOOLS:
        return "tools"
    raise AssertionError(f"{module} is in no layer: add it to BASE or TOOLS here and to docs/architecture.md")


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its text."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = package
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                targets |= {base} | {f"{base}.{a.name}" for a in node.names}
        resolved = {resolve(t) for t in targets if t.startswith("edgepack")}
        # a module's own package (`from edgepack.runtime import x` inside runtime/) is not an edge
        edges[mod] = {t for t in resolved if t and t != mod and not mod.startswith(t + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_imports_follow_the_layers():
    edges = imports(modules())
    wrong = sorted(f"{a} ({layer(a)}) imports {b} ({layer(b)})"
                   for a, targets in edges.items() for b in targets if layer(b) not in MAY_IMPORT[layer(a)])
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    assert not cycles(imports(modules()))


def test_the_checker_sees_function_level_imports_and_cycles():
    """The walk must see what a reader of the code sees: an import inside a function counts."""
    edges = {"edgepack.a": {"edgepack.b"}, "edgepack.b": {"edgepack.c"}, "edgepack.c": {"edgepack.a"},
             "edgepack.d": set()}
    assert cycles(edges) == [["edgepack.a", "edgepack.b", "edgepack.c"]]
    mods = modules()
    runtime_init = imports(mods)["edgepack.runtime.generate"]
    assert "edgepack.runtime.engines" in runtime_init  # a top-level import
    assert "edgepack.converters.reference" in imports(mods)["edgepack.evaluate"]  # one inside a function
