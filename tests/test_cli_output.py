"""Every CLI command, run as a user runs it (a child process, so native libraries' output is
seen too), writes only edgepack's own lines on stderr: no LiteRT C++ INFO lines, torch or
torchao warnings, or progress bars when stderr is not a terminal. `run --stats` / `--json` report
how the run went, checked against the files and the generation itself."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

GPL3 = "/usr/share/common-licenses/GPL-3"
# What edgepack itself writes on stderr: its prefixed lines, export's stages and table, bench's steps.
OWN = re.compile(r"edgepack[: (]|source: |notice: |slicing: |(reading weights|lowering|quantizing|packaging|writing)\b"
                 r"|quantization:$|  \S|wrote |read bandwidth \.\.\.$|first load: |run \d+/\d+: "
                 r"|\S+: \d+ tensors, [\d.]+B parameters")  # synth's summary


def edgepack(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "edgepack.cli", *args], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def foreign_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not OWN.match(line)]


def test_export_writes_only_its_stages(checkpoint, kept_lowerings, tmp_path):
    proc = edgepack("export", str(checkpoint("gemma3")), "--format", "litertlm", "--quant", "int8",
                    "--max-context", "64", "--prefill-len", "8", "-o", str(tmp_path / "b"),
                    "--keep-lowered", str(kept_lowerings))  # the run's: its lowering is done once
    assert foreign_lines(proc.stderr) == [], proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("wrote ")


def test_profile_preset_writes_only_its_report():
    proc = edgepack("profile", "--preset", "gemma-3n-E2B", "--quant", "int4", "--context", "4096",
                    "--device", "pi5-8gb")
    assert foreign_lines(proc.stderr) == [], proc.stderr
    assert "pi5-8gb" in proc.stdout, proc.stdout


@pytest.mark.parametrize("fmt", ["litertlm", "onnx"])
def test_bundle_commands_write_only_edgepack_lines(bundle, fmt, tmp_path):
    folder = str(bundle("gemma3", fmt))
    signed = shutil.copytree(folder, tmp_path / "signed")
    commands = [
        ["inspect", folder],
        ["eval", folder, "--text", GPL3, "--tokens", "16"],
        ["profile", folder, "--prompt-tokens", "8", "--tokens", "4"],
        ["bench", folder, "--prefill", "8", "--decode", "4", "--runs", "2"],
        ["keygen", str(tmp_path / "key")],
        ["sign", str(signed), "--key", str(tmp_path / "key")],
        ["inspect", str(signed), "--trusted-key", str(tmp_path / "key.pub")],
    ]
    for args in commands:
        proc = edgepack(*args)
        assert foreign_lines(proc.stderr) == [], (args, proc.stderr)
    run = edgepack("run", folder, "--prompt", "The capital of France is", "--max-new-tokens", "8", "--stats")
    assert len(run.stderr.splitlines()) == 1 and "tok/s" in run.stderr and "peak memory" in run.stderr


def test_run_json_reports_the_run(bundle):
    from edgepack.runtime import Generator

    folder = bundle("gemma3", "onnx")
    out = json.loads(edgepack("run", str(folder), "--prompt", "Once upon a time", "--max-new-tokens", "6",
                              "--json").stdout)
    gen = Generator(folder)
    ids = gen.encode("Once upon a time")
    new = list(gen.generate_ids(ids, 6))
    assert out["text"] == gen.tokenizer.decode(new, skip_special_tokens=True)  # greedy: the same text
    st = out["stats"]
    on_disk = sum(p.stat().st_size for p in Path(folder).iterdir() if p.name != "manifest.json")
    assert st["bundle_bytes"] == on_disk
    assert st["prompt_tokens"] == len(ids) and st["new_tokens"] == gen.last_run.new_tokens
    assert st["first_token_s"] > 0 and st["load_s"] > 0 and st["peak_rss_bytes"] > 0
    assert st["decode_tok_s"] is None or st["decode_tok_s"] > 0


def test_serve_writes_one_line_per_request_and_stops_on_ctrl_c(bundle):
    """`edgepack serve` as a user runs it: its address on the first line, a line when ready, one per
    request (no prompt text), and a clean stop on Ctrl-C."""
    import signal
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "edgepack.cli", "serve", str(bundle("gemma3", "onnx")),
                             "--port", "0"], stderr=subprocess.PIPE, text=True,
                            # a pytest-xdist worker ignores SIGINT, and a child would inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(300, proc.kill)  # a line that never comes must not hang the suite
    watchdog.start()
    try:
        first = proc.stderr.readline()
        url = re.search(r"http://[\d.]+:\d+/v1", first).group(0)
        assert "ready: " in proc.stderr.readline()
        request = urllib.request.Request(url + "/completions", json.dumps({"prompt": "Secret words", "max_tokens": 2})
                                         .encode(), {"Content-Type": "application/json"})
        assert json.loads(urllib.request.urlopen(request, timeout=60).read())["object"] == "text_completion"
        # the handler logs once the response is sent: the client can have it a moment before the
        # line is written, so Ctrl-C waits for the line (CI once interrupted in between)
        logged = proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        watchdog.cancel()
        proc.kill()
    lines = [first, logged] + rest.splitlines()
    assert proc.returncode == 130 and foreign_lines("\n".join(lines)) == [], lines
    assert any("POST /v1/completions 200" in line for line in lines) and "Secret" not in rest
