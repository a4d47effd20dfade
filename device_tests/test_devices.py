"""edgepack's runtime on each device target against the same runtime on the host.

- tiny Gemma 3n (multimodal layout) and Gemma 3 bundles, both formats: the same prompt ids, the
  same 16 greedy tokens, and each step's largest logits within 1e-3 of the host's;
- the real Gemma 3 270M int4 bundles, both formats: the host's first 8 greedy tokens (top logits
  within 8%: quantized kernels differ by ISA), inside the memory of a 2 GB board (a cgroup limit on
  the emulated Pis) without being killed;
- `edgepack inspect` verifies a bundle on the device and rejects a copy with one altered byte;
- a bundle predicted not to fit the board is refused before loading, with the predicted numbers;
  forced past the check, the same run is killed at the limit;
- `edgepack serve` starts on the device and answers a completion over loopback with the host's
  greedy tokens;
- an audio prompt (Gemma 3n, both formats: the audio graphs on onnxruntime and LiteRT) gives the
  host's tokens and logits (the emulated Pi 5 only: one board shows the aarch64 audio path).

Emulation is slow (8x to 600x): nothing here is a speed figure.
"""

from __future__ import annotations

import json
import shutil

import pytest

from device_tests.conftest import on_host, on_target
from device_tests.targets import SERVE_ON_DEVICE, Emulated
from edgepack.footprint import device_budget

TINY = [(m, f) for m in ("gemma3n_multimodal", "gemma3") for f in ("litertlm", "onnx")]
PROMPTS = ["The capital of France is", "Once upon a time, in a land far away, there lived a small dragon"]
BOARD = "pi4-2gb"  # the 270M must fit the smallest Pi 4
TOO_SMALL = "pi-zero-2w"  # 512 MB: the 270M int4 is predicted not to fit


def expected_engine(target, fmt: str) -> str | None:
    if fmt == "onnx":
        return "OnnxEngine"
    cpu = target.info.get("cpu")  # emulated boards: the Pi 4's A72 has no LSE atomics
    return {"cortex-a72": "InterpreterEngine", "cortex-a76": "CompiledModelEngine"}.get(cpu)


def assert_same_generation(host: dict, device: dict, tol: float = 1e-3, relative: bool = False) -> None:
    assert device["machine"] == "aarch64"
    assert device["threads"] == device["cores"]  # the runtime uses every core the device gives it
    for h, d in zip(host["runs"], device["runs"], strict=True):
        where = f"{d['bundle']} {d['prompt']!r}"
        assert d["prompt_ids"] == h["prompt_ids"], where
        assert d["tokens"] == h["tokens"], where
        for step, (hi, hv, di, dv) in enumerate(zip(h["top_ids"], h["top_logits"], d["top_ids"], d["top_logits"])):
            host_logit = dict(zip(hi, hv))
            common = [(host_logit[i], v) for i, v in zip(di, dv) if i in host_logit]
            assert len(common) >= len(hi) // 2, f"{where} step {step}: top logits differ: {hi} vs {di}"
            err = max(abs(a - b) / (abs(a) if relative else 1) for a, b in common)
            assert err < tol, f"{where} step {step}: logits differ by {err:.4g}{' (relative)' if relative else ''} " \
                              f"(host {hv[:2]}, device {dv[:2]})"


@pytest.fixture(scope="session")
def tiny_bundles(bundle) -> list:
    """The TINY bundles, made before any board is prepared (a session fixture is set up before
    `target`): on a fresh machine the arm64 root takes minutes to build, and the other pytest
    worker, whose first tests want the Gemma 3n `.litertlm`, would wait for it all that time."""
    return [bundle(m, f) for m, f in TINY]


def test_tiny_bundles_match_host(tiny_bundles, target, shared):
    host = on_host(tiny_bundles, PROMPTS, 16, shared)
    res = on_target(target, tiny_bundles, PROMPTS, 16)
    assert res.returncode == 0, res.stderr[-3000:]
    device = json.loads(res.stdout.strip().splitlines()[-1])
    assert_same_generation(host, device)
    for (_, fmt), run in zip([t for t in TINY for _ in PROMPTS], device["runs"]):
        want = expected_engine(target, fmt)
        assert want is None or run["engine"] == want, (run["bundle"], run["engine"])


@pytest.mark.parametrize("fmt", ["onnx", "litertlm"])
def test_270m_int4_first_tokens_within_2gb(target, bundle_270m, fmt, shared):
    folder = bundle_270m(fmt, "int4")
    prompt = ["The capital of France is"]
    host = on_host([folder], prompt, 8, shared)
    limit = device_budget(BOARD)
    res = on_target(target, [folder], prompt, 8, memory_limit=limit)
    assert not res.oom_killed, f"killed at the {BOARD} limit ({limit >> 20} MiB)"
    assert res.returncode == 0, res.stderr[-3000:]
    # Quantized kernels quantize activations per ISA (XNNPACK's dynamic-range int4/int8 on AVX vs
    # NEON; MatMulNBits at accuracy level 4), so logits differ between x86 and arm64 beyond float
    # rounding: measured up to 2.9% (ONNX) and 6.4% (LiteRT) of a top logit. Tokens must not.
    assert_same_generation(host, json.loads(res.stdout.strip().splitlines()[-1]), tol=0.08, relative=True)
    if res.peak is not None:
        assert res.peak <= limit


@pytest.mark.parametrize("fmt", ["onnx", "litertlm"])
def test_audio_prompt_gives_the_hosts_tokens(fmt, target, audio_bundles, wavs, shared):
    if target.name == "emulated-pi4":
        pytest.skip("the audio path runs on the emulated Pi 5 (one emulated board shows it)")
    folder, prompt = audio_bundles(fmt), ["Transcribe this audio."]
    host = on_host([folder], prompt, 8, shared, extra=["--audio", str(wavs[1])])
    res = on_target(target, [folder], prompt, 8, extra=["--audio", target.path(wavs[1])])
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_generation(host, json.loads(res.stdout.strip().splitlines()[-1]))


def test_inspect_verifies_on_device(target, bundle, tmp_path):
    folder = bundle("gemma3", "onnx")
    ok = target.run(["-m", "edgepack.cli", "inspect", target.path(folder)])
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "checksums verified" in ok.stdout, ok.stdout
    altered = tmp_path / "altered"
    shutil.copytree(folder, altered)
    data = altered / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(raw)
    bad = target.run(["-m", "edgepack.cli", "inspect", target.path(altered)])
    assert bad.returncode == 2, (bad.returncode, bad.stderr[-3000:])
    assert "model.onnx.data fails its sha256 check" in bad.stderr


def test_bundle_over_budget_is_refused_before_loading(target, bundle_270m):
    folder = bundle_270m("onnx", "int4")
    limit = device_budget(TOO_SMALL)
    refused = on_target(target, [folder], ["Hi"], 4, memory_limit=limit)
    assert refused.returncode == 2, (refused.returncode, refused.stderr[-3000:])
    assert "refusing to load it" in refused.stderr and "weights" in refused.stderr, refused.stderr
    assert not refused.oom_killed
    if refused.peak is None:
        return  # a real board without a measurable limit: the refusal is what counts
    assert refused.peak < limit
    forced = on_target(target, [folder], ["Hi"], 4, memory_limit=limit, extra=["--no-memory-check"])
    assert forced.oom_killed or forced.returncode in (-9, 137), (forced.returncode, forced.stderr[-2000:])


def test_serve_answers_on_the_device(target, bundle, shared):
    if isinstance(target, Emulated) and target.cpu == "cortex-a72":
        pytest.skip("the emulated Pi 5 runs this: the server is the same Python on both boards, and emulation "
                    "time is spent once")
    folder = bundle("gemma3", "onnx")
    host = on_host([folder], PROMPTS[:1], 8, shared)["runs"][0]
    res = target.run([str(SERVE_ON_DEVICE), target.path(folder), "--prompt", PROMPTS[0], "--tokens", "8"])
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["health"] == {"status": "ok"}
    from edgepack.runtime import Generator

    tokens = host["tokens"]
    assert out["completion"]["usage"] == {"prompt_tokens": len(host["prompt_ids"]), "completion_tokens": len(tokens),
                                          "total_tokens": len(host["prompt_ids"]) + len(tokens)}
    assert out["completion"]["choices"][0]["text"] == Generator(folder).tokenizer.decode(tokens, skip_special_tokens=True)
