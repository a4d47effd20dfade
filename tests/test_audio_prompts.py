"""Gemma 3n audio prompts end to end (export, runtime/audio_prompt.py, the audio graphs of both
formats) against transformers' own `Gemma3nForConditionalGeneration` on the tiny multimodal
checkpoint: its audio tower has the real structure (subsampling convolutions, a conformer block
with chunked local attention). The vision tower needs timm, which does not load here; the
reference stands an empty module in for it, never called on audio prompts (issue 19 allows it).
The checkpoint carries Gemma 3n's own chat template (audio parts render as <audio_soft_token>).

The reference's prompt is built as Gemma3nProcessor builds it: each `<audio_soft_token>` of the
text replaced by "\\n\\n<start_of_audio>" + 188 soft tokens + "<end_of_audio>\\n\\n", tokenized by
transformers' tokenizer; its features come from Gemma3nAudioFeatureExtractor with the
checkpoint's preprocessor_config.json, its WAVs read by scipy. A `.litertlm`'s encoder takes a
fixed window of 3,008 frames (LiteRT-LM's contract), the features then zeros: its reference is
transformers given the same window (the encoder's last soft token of a clip sees past the clip's
end, so an unpadded batch gives another last token).

Google's LiteRT-LM engine runs the `.litertlm` with audio content: it computes features with its
own frontend constants and keeps only a clip's valid soft tokens, so its text is not transformers'
(docs/bundle-format.md); the test checks that it runs our sections and that the clip matters.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from edgepack.errors import EdgepackError

PROMPT = "Transcribe this audio."


@pytest.fixture(scope="module")
def audio_bundle(audio_bundles) -> Path:
    return audio_bundles("onnx")


@pytest.fixture(scope="module")
def transformers_model(checkpoint):
    import torch
    from transformers import Gemma3nForConditionalGeneration
    from transformers.models.gemma3n import modeling_gemma3n

    real = modeling_gemma3n.AutoModel.from_config

    def from_config(cfg, *args, **kw):  # the vision tower (timm) as an empty placeholder
        return torch.nn.Module() if cfg.model_type == "gemma3n_vision" else real(cfg, *args, **kw)

    with mock.patch.object(modeling_gemma3n.AutoModel, "from_config", from_config):
        return Gemma3nForConditionalGeneration.from_pretrained(
            str(checkpoint("gemma3n_multimodal")), dtype=torch.float32).eval()


def reference_inputs(folder: Path, wavs: list[Path], text: str, window: int | None = None) -> dict:
    """input_ids, input_features and input_features_mask as transformers' processor makes them;
    with `window`, the features padded with zeros (mask false) to that many frames."""
    import torch
    from scipy.io import wavfile
    from scipy.signal import resample_poly
    from transformers import Gemma3nAudioFeatureExtractor, PreTrainedTokenizerFast

    clips = []
    for path in wavs:
        rate, pcm = wavfile.read(path)
        x = pcm.astype(np.float64) / 32768.0
        clips.append((resample_poly(x, 16_000 // 50, rate // 50) if rate != 16_000 else x).astype(np.float32))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    expanded = "\n\n<start_of_audio>" + "<audio_soft_token>" * 188 + "<end_of_audio>\n\n"
    ids = tok(text.replace("<audio_soft_token>", expanded), add_special_tokens=False)["input_ids"]
    feats = Gemma3nAudioFeatureExtractor.from_pretrained(str(folder))(clips, return_tensors="pt")
    features, mask = feats["input_features"], feats["input_features_mask"]
    if window:
        pad = window - features.shape[1]
        features = torch.nn.functional.pad(features, (0, 0, 0, pad))
        mask = torch.nn.functional.pad(mask, (0, pad), value=False)
    return {"input_ids": torch.tensor([ids]), "input_features": features, "input_features_mask": mask}


def test_reference_text_view_embeds_multimodal_ids_as_the_full_class(transformers_model, reference):
    """The equivalence tests' reference for a multimodal checkpoint is its text decoder
    (converters/reference.py); on ids of the vision and audio vocabularies it must give the full
    class's logits, which take those ids' embeddings from embed_vision and embed_audio."""
    import torch

    view = reference("gemma3n_multimodal")
    ids = torch.tensor([[2, 818, 262_150, 1001, 262_272, 262_399, 5]])
    with torch.no_grad():
        want = transformers_model(input_ids=ids).logits
        assert float((view(ids).logits - want).abs().max()) < 1e-4
        text = view.model.embed_tokens.text  # the decoder's own table alone: another model on these ids
        view.model.embed_tokens, kept = text, view.model.embed_tokens
        try:
            assert float((view(ids).logits - want).abs().max()) > 1e-2
        finally:
            view.model.embed_tokens = kept


@pytest.mark.parametrize("fmt", ["onnx", "litertlm"])
@pytest.mark.parametrize("clips", [1, 2])
def test_audio_prompts_match_transformers(fmt, clips, audio_bundles, transformers_model, checkpoint, wavs):
    from test_equivalence import assert_follows_reference

    from edgepack.converters.models.gemma3n_audio import ENCODER_FRAMES
    from edgepack.runtime import Generator

    gen = Generator(audio_bundles(fmt))
    ids = gen.encode(PROMPT, clips=clips)
    ref = reference_inputs(checkpoint("gemma3n_multimodal"), wavs[:clips], "<bos>" + "<audio_soft_token>" * clips + PROMPT,
                           window=ENCODER_FRAMES if fmt == "litertlm" else None)
    assert ids == ref["input_ids"][0].tolist()  # the placement is the processor's

    steps = []
    got = list(gen.generate_ids(ids, 32, on_step=steps.append, soft=gen.audio_soft_tokens(wavs[:clips])))
    assert len(got) == 32
    assert_follows_reference(transformers_model, ids, steps, input_features=ref["input_features"],
                             input_features_mask=ref["input_features_mask"])


def test_the_clip_decides_the_output(audio_bundle, wavs):
    """The soft tokens reach the decoder: another clip, other logits (and a text token in the
    audio's place would not be a soft token at all)."""
    from edgepack.runtime import Generator

    gen = Generator(audio_bundle)
    ids = gen.encode(PROMPT, clips=1)
    first = []
    for wav in wavs:
        steps = []
        next(gen.generate_ids(ids, 1, on_step=steps.append, soft=gen.audio_soft_tokens([wav])), None)
        first.append(steps[0].logits)
    assert np.abs(first[0] - first[1]).max() > 1e-2


def test_chat_places_audio_in_the_user_turn(audio_bundle, audio_checkpoint):
    """--chat: the user's turn holds the clips before the text, then the processor's expansion, as
    transformers' apply_chat_template (audio parts, then the text part) + processor make it."""
    from transformers import PreTrainedTokenizerFast

    from edgepack.runtime import Generator

    folder = audio_checkpoint
    tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token="<bos>")
    content = [{"type": "audio"}, {"type": "audio"}, {"type": "text", "text": PROMPT}]
    text = tok.apply_chat_template([{"role": "user", "content": content}],
                                   chat_template=(folder / "chat_template.jinja").read_text(),
                                   add_generation_prompt=True, tokenize=False)
    expanded = "\n\n<start_of_audio>" + "<audio_soft_token>" * 188 + "<end_of_audio>\n\n"
    want = tok(text.replace("<audio_soft_token>", expanded), add_special_tokens=False)["input_ids"]
    assert Generator(audio_bundle).encode(PROMPT, chat=True, clips=2) == want


def test_litert_lm_runs_the_audio_sections(audio_bundles, wavs, tmp_path):
    """Google's engine loads the .litertlm's audio encoder, adapter and end-of-audio sections
    (LiteRT-LM refuses a bundle whose sections break its contract) and answers an audio prompt
    from them: another clip, another answer."""
    import litert_lm

    from edgepack.system import default_threads

    cpu = litert_lm.Backend.CPU(thread_count=default_threads())
    engine = litert_lm.Engine(str(audio_bundles("litertlm") / "model.litertlm"), backend=cpu, audio_backend=cpu,
                              cache_dir=str(tmp_path))
    answers = []
    for wav in wavs:
        conversation = engine.create_conversation(sampler_config=litert_lm.SamplerConfig(top_k=1))
        reply = conversation.send_message({"role": "user", "content": [
            {"type": "audio", "path": str(wav)}, {"type": "text", "text": PROMPT}]}, max_output_tokens=8)
        answers.append(str(reply))
    assert all(answers) and answers[0] != answers[1]


@pytest.mark.parametrize("fmt", ["onnx", "litertlm"])
def test_quantized_audio_tower_keeps_its_soft_tokens(fmt, bundle, wavs):
    """The named recipes' audio tower (int8 in int8, int4 and int4-head4: per channel in TFLite,
    blocks of 32 in ONNX): each soft token's cosine similarity to the float tower's >= 0.99."""
    from edgepack.runtime import Generator

    exact = Generator(bundle("gemma3n_multimodal", fmt)).audio_soft_tokens(wavs)
    quantized = Generator(bundle("gemma3n_multimodal", fmt, "int8")).audio_soft_tokens(wavs)
    for a, b in zip(exact, quantized):
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        assert 0.99 <= cos.min() < 1.0, cos.min()  # close, and quantized indeed


def test_audio_without_an_encoder_and_too_many_clips_are_one_line(bundle, audio_bundle, wavs):
    from edgepack.runtime import Generator

    with pytest.raises(EdgepackError, match="has no audio encoder"):
        Generator(bundle("gemma3n_causal", "onnx")).generate(PROMPT, 4, audio=wavs[:1])
    with pytest.raises(EdgepackError, match="this bundle's context is 512"):
        Generator(audio_bundle).generate(PROMPT, 4, audio=wavs[:1] * 3)


def _wav(path: Path, samples: np.ndarray, rate: int = 16_000) -> Path:
    """A 16-bit mono WAV of `samples` (scipy's writer, an independent one)."""
    from scipy.io import wavfile

    wavfile.write(path, rate, samples.astype(np.int16))
    return path


def _text(path: Path) -> Path:
    path.write_text("hello")
    return path


@pytest.mark.parametrize("make,needle", [
    (lambda d: _wav(d / "empty.wav", np.zeros(0)), "has no samples"),
    (lambda d: _wav(d / "silent.wav", np.zeros(16_000)), "is silent"),
    (lambda d: _wav(d / "rate0.wav", np.ones(16_000), rate=0), "0 Hz is outside"),
    (lambda d: _text(d / "text.wav"), "not a WAV file"),
])
def test_bad_audio_is_one_line_and_writes_nothing(make, needle, audio_bundle, tmp_path):
    """`edgepack run --audio` with a bad clip: exit 2, one line, before the bundle is loaded."""
    from hostile_inputs import cli

    clip = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = cli("run", str(audio_bundle), "--audio", str(clip), "--prompt", PROMPT)
    assert code == 2 and needle in err and err.count("\n") == 1 and out == "", (code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_audio_on_a_bundle_without_an_encoder_is_one_line(bundle, wavs):
    from hostile_inputs import cli

    code, out, err = cli("run", str(bundle("gemma3", "onnx")), "--audio", str(wavs[1]), "--prompt", PROMPT)
    assert code == 2 and "has no audio encoder" in err and err.count("\n") == 1, (code, err)


def test_an_onnx_export_lets_go_of_the_weights_it_read(checkpoint, tmp_path):
    """The exporter's rewrite rules (onnxscript) keep the last graph they matched, weights and all,
    until the next export: full-size E2B's text weights stayed resident while its audio tower was
    exported after them (5.1 GB peak against 4.1 without the tower). Once an export has written
    its file and the graph is dropped, none of the tensors it read may still be alive."""
    import gc

    import torch

    from edgepack.converters import onnx_export, sources
    from edgepack.converters.decoder import load_weights
    from edgepack.converters.models.gemma3n_audio import AudioGraph

    src = sources.open_source(checkpoint("gemma3n_multimodal"))
    graph = AudioGraph(src.audio["config"]["audio_config"], src.config)
    load_weights(graph, src, progress=None)
    read = {p.untyped_storage().data_ptr() for p in graph.parameters()}
    onnx_export.export_audio(graph, tmp_path / "audio_encoder.onnx")
    assert (tmp_path / "audio_encoder.onnx").is_file()
    del graph
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter)
             and o.device.type == "cpu" and o.untyped_storage().data_ptr() in read]
    assert not alive, f"{len(alive)} of the export's {len(read)} weight tensors are still alive"
