#!/usr/bin/env python3
"""Compares two bundles: every listed file byte for byte (by size and sha256), and the manifests
as documents (the same fields and values, whatever the key order). Exit 0 when they are the same.

    python3 scripts/bundle_diff.py BUNDLE_A BUNDLE_B

Used to show that a refactoring of the exporter writes the same bundles as before it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def describe(folder: Path) -> tuple[dict, dict]:
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]}
    return manifest, files


def diff(a: Path, b: Path) -> list[str]:
    ma, fa = describe(a)
    mb, fb = describe(b)
    out = []
    for p in sorted(set(fa) | set(fb)):
        if fa.get(p) == fb.get(p):
            continue
        if p.endswith(".onnx") and p in fa and p in fb and onnx_without_stack_traces(a / p) == onnx_without_stack_traces(b / p):
            out.append(f"({p}: the same graph once the exporter's stack traces are dropped)")
        elif p.endswith(".litertlm") and p in fa and p in fb and same_sections(a / p, b / p, ma, mb):
            out.append(f"({p}: every section the same; only the header differs, where litert-lm-builder "
                       "writes a creation timestamp and a random id)")
        else:
            out.append(f"file {p}: {fa.get(p)} vs {fb.get(p)}")
    for key in sorted(set(ma) | set(mb)):
        if key == "files":
            continue  # compared above, file by file
        if ma.get(key) != mb.get(key):
            out.append(f"manifest {key} differs")
    if not out and (a / "manifest.json").read_bytes() != (b / "manifest.json").read_bytes():
        out.append("(manifest.json: same document, other key order or layout)")
    return out


def onnx_without_stack_traces(path: Path) -> bytes:
    """The graph's bytes without `pkg.torch.onnx.stack_trace` node metadata (older edgepack
    releases kept the exporter's stack traces: the building machine's paths and line numbers)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for node in [*model.graph.node, *(n for f in model.functions for n in f.node)]:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return model.SerializeToString()


def same_sections(pa: Path, pb: Path, ma: dict, mb: dict) -> bool:
    """Both .litertlm files hold the same sections at the same offsets, byte for byte, and differ
    only before the first section (the header)."""
    sa, sb = ma["graph"].get("sections"), mb["graph"].get("sections")
    if not sa or sa != sb or pa.stat().st_size != pb.stat().st_size:
        return False
    first = min(s["offset"] for s in sa)
    with open(pa, "rb") as fa, open(pb, "rb") as fb:
        fa.seek(first)
        fb.seek(first)
        while True:
            x, y = fa.read(1 << 24), fb.read(1 << 24)
            if x != y:
                return False
            if not x:
                return True


def main() -> int:
    a, b = Path(sys.argv[1]), Path(sys.argv[2])
    lines = diff(a, b)
    for line in lines:
        print(line)
    same = all(line.startswith("(") for line in lines)
    print(f"{a.name} vs {b.name}: {'same' if same else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
