"""Bad input: one clear line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edgepack.cli import main


def run_cli(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgepack: error: "), err
    return lines[0]


def test_missing_source(capsys, tmp_path):
    assert "source not found" in run_cli(capsys, "export", str(tmp_path / "nope"), "-o", str(tmp_path / "o"))


def test_folder_that_is_not_a_checkpoint(capsys, tmp_path):
    (tmp_path / "src").mkdir()
    line = run_cli(capsys, "export", str(tmp_path / "src"), "-o", str(tmp_path / "o"))
    assert "not a Hugging Face checkpoint" in line


def test_file_that_is_not_gguf(capsys, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF but not really")
    assert "not a readable GGUF" in run_cli(capsys, "export", str(bad), "-o", str(tmp_path / "o"))


def test_unsupported_architecture(capsys, tmp_path):
    src = tmp_path / "llama"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    line = run_cli(capsys, "export", str(src), "-o", str(tmp_path / "o"))
    assert "unsupported architecture 'LlamaForCausalLM'" in line and "Gemma3nForConditionalGeneration" in line
    assert not (tmp_path / "o").exists()


@pytest.fixture
def bundle_copy(bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle("gemma3", "onnx"), dst)
    return dst


def test_truncated_bundle_file(capsys, bundle_copy):
    data = (bundle_copy / "model.onnx.data").read_bytes()
    (bundle_copy / "model.onnx.data").write_bytes(data[: len(data) // 2])
    for cmd in (["inspect"], ["run", "--prompt", "hi"]):
        line = run_cli(capsys, cmd[0], str(bundle_copy), *cmd[1:])
        assert "truncated" in line


def test_altered_bundle_file(capsys, bundle_copy):
    path = bundle_copy / "model.onnx.data"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    for cmd in (["inspect"], ["run", "--prompt", "hi"]):
        assert "sha256" in run_cli(capsys, cmd[0], str(bundle_copy), *cmd[1:])


def test_missing_bundle_file(capsys, bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    assert "bundle file missing" in run_cli(capsys, "run", str(bundle_copy), "--prompt", "hi")


def test_not_a_bundle(capsys, tmp_path):
    assert "bundle not found" in run_cli(capsys, "inspect", str(tmp_path / "nope"))
    assert "not an edgepack bundle" in run_cli(capsys, "run", str(tmp_path), "--prompt", "hi")


def test_corrupt_manifest(capsys, bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    assert "corrupt" in run_cli(capsys, "inspect", str(bundle_copy))


def test_prompt_longer_than_context(capsys, bundle):
    line = run_cli(capsys, "run", str(bundle("gemma3", "onnx")), "--prompt", "word " * 200)
    assert "context is 64" in line


@pytest.mark.parametrize("flag,value,needle", [
    ("--temperature", "-1", "--temperature"),
    ("--top-p", "0", "--top-p"),
    ("--top-p", "1.5", "--top-p"),
    ("--top-k", "-3", "--top-k"),
    ("--max-new-tokens", "0", "--max-new-tokens"),
    ("--ple-cache-mb", "-1", "--ple-cache-mb"),
])
def test_invalid_sampling_values(capsys, bundle, flag, value, needle):
    assert needle in run_cli(capsys, "run", str(bundle("gemma3", "onnx")), "--prompt", "hi", flag, value)


def test_unknown_format_and_quant(capsys, checkpoint, tmp_path):
    assert "unknown quantization" in run_cli(
        capsys, "export", str(checkpoint("gemma3")), "-o", str(tmp_path / "o"), "--quant", "int3")


def test_console_script_reports_without_traceback(tmp_path):
    """The installed `edgepack` entry point, as a user runs it."""
    exe = shutil.which("edgepack") or f"{sys.executable} -m edgepack.cli"
    proc = subprocess.run([*exe.split(), "run", str(tmp_path), "--prompt", "x"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"edgepack: error: {tmp_path} is not an edgepack bundle: no manifest.json"
    assert "Traceback" not in proc.stderr
