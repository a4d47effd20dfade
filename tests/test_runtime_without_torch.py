"""The runtime imports and runs with torch, transformers and litert_torch unimportable (as on a Pi
or a phone), and produces the same tokens as in the full environment."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

BLOCKER = textwrap.dedent("""
    import sys, importlib.abc
    BLOCKED = ("torch", "transformers", "litert_torch", "safetensors", "jax")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the runtime must not need it")
    sys.meta_path.insert(0, Block())
""")


@pytest.mark.parametrize("fmt", ["litertlm", "onnx"])
@pytest.mark.parametrize("name", ["gemma3n_multimodal", "gemma3"])
def test_runtime_runs_without_torch(name, fmt, bundle):
    from edgepack.runtime import Generator

    folder = bundle(name, fmt)
    gen = Generator(folder)
    expected = list(gen.generate_ids(gen.encode("The capital of France is"), 12))
    script = BLOCKER + textwrap.dedent(f"""
        import json
        from edgepack.runtime import Generator
        gen = Generator({str(folder)!r})
        ids = list(gen.generate_ids(gen.encode("The capital of France is"), 12))
        assert "torch" not in sys.modules
        print(json.dumps(ids))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected


def test_profile_without_torch(bundle):
    """On a device: `profile BUNDLE` predicts without the export side; `--preset`, which needs
    transformers, says what to install instead of a traceback."""
    folder = bundle("gemma3n_multimodal", "onnx")
    script = BLOCKER + textwrap.dedent(f"""
        from edgepack.cli import main
        code = main(["profile", {str(folder)!r}, "--no-run", "--json"])
        assert code == 0 and "torch" not in sys.modules, code
        sys.exit(main(["profile", "--preset", "gemma-3n-E2B"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["predicted"]["peak"] > 0
    assert "pip install 'edgepack[convert]'" in proc.stderr and "Traceback" not in proc.stderr
