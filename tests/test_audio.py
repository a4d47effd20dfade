"""runtime/audio.py against independent references, on speech spoken by espeak-ng: sox reads every
WAV encoding the same, scipy's resample_poly resamples the same (and sox's own resampler nearly so),
and the log-mel features equal transformers' Gemma3nAudioFeatureExtractor, defaults and a
checkpoint's preprocessor_config.json alike."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgepack.errors import EdgepackError
from edgepack.runtime import audio

pytestmark = pytest.mark.skipif(not (shutil.which("sox") and shutil.which("espeak-ng")),
                                reason="sox and espeak-ng are missing (scripts/setup installs them with apt)")
SENTENCE = "The quick brown fox jumps over the lazy dog, and the capital of France is Paris."


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """espeak-ng's voice: a 16-bit mono WAV at 22,050 Hz, a few seconds long."""
    out = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(out), SENTENCE], check=True, capture_output=True)
    return out


def sox(*args: str) -> None:
    subprocess.run(["sox", *args], check=True, capture_output=True)


def sox_floats(path: Path, tmp_path: Path, rate: int | None = None) -> np.ndarray:
    """What sox reads from `path`: mono float32 (its channel mix), resampled when `rate` is given."""
    raw = tmp_path / "sox.f32"
    sox(str(path), "-t", "f32", "-c", "1", *(["-r", str(rate)] if rate else []), str(raw),
        *(["rate", "-v"] if rate else []))
    return np.fromfile(raw, "<f4")


@pytest.mark.parametrize("encoding", [
    ["-e", "unsigned", "-b", "8"], ["-e", "signed", "-b", "16"], ["-e", "signed", "-b", "24"],
    ["-e", "signed", "-b", "32"], ["-e", "float", "-b", "32"], ["-e", "float", "-b", "64"],
    ["-e", "signed", "-b", "16", "-c", "2"], ["-e", "float", "-b", "32", "-c", "3"],  # 3 channels: WAVE_FORMAT_EXTENSIBLE
], ids=lambda e: "-".join(e[1::2]))
def test_every_wav_encoding_reads_as_sox_reads_it(encoding, speech, tmp_path):
    wav = tmp_path / "x.wav"
    sox(str(speech), *encoding, str(wav))
    ours, rate = audio.read_wav(wav)
    theirs = sox_floats(wav, tmp_path)
    assert rate == 22_050 and ours.dtype == np.float32 and len(ours) == len(theirs)
    assert np.abs(ours - theirs).max() <= 2e-7 * max(1.0, float(np.abs(theirs).max())), np.abs(ours - theirs).max()


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 44_100, 48_000])
def test_resampling_equals_scipy_and_nearly_sox(rate, speech, tmp_path):
    from scipy.signal import resample_poly

    wav = tmp_path / "x.wav"
    sox(str(speech), "-r", str(rate), "-e", "float", "-b", "32", str(wav), "rate", "-v")
    x, got_rate = audio.read_wav(wav)
    ours = audio.resample(x, rate)
    g = np.gcd(rate, audio.SAMPLE_RATE)
    want = resample_poly(x.astype(np.float64), audio.SAMPLE_RATE // g, rate // g)
    assert len(ours) == len(want) and np.abs(ours - want).max() < 1e-5
    # sox's resampler is another design (a longer filter, a sharper edge): below 7 kHz, under both
    # filters' transition bands, the two agree within 1.2% (measured 0.1-1.0%); linear
    # interpolation, a resampler without a proper low-pass, is 1.7-9% off there.
    theirs = sox_floats(wav, tmp_path, audio.SAMPLE_RATE)
    n = min(len(ours), len(theirs))
    band = np.fft.rfftfreq(n, 1 / audio.SAMPLE_RATE) < 7_000

    def off(y):
        return np.sqrt(np.sum(np.abs(np.fft.rfft(y[:n] - theirs[:n])[band]) ** 2)
                       / np.sum(np.abs(np.fft.rfft(theirs[:n])[band]) ** 2))

    linear = np.interp(np.arange(n) * rate / audio.SAMPLE_RATE, np.arange(len(x)), x)
    assert off(ours) < 0.012 < off(linear), (off(ours), off(linear))


def test_log_mel_equals_transformers(speech):
    from transformers import Gemma3nAudioFeatureExtractor

    samples = audio.load_speech(speech)
    ours, mask = audio.log_mel(samples)
    ref = Gemma3nAudioFeatureExtractor()(samples, return_tensors="np")
    want, want_mask = ref["input_features"][0], ref["input_features_mask"][0]
    assert ours.shape == want.shape and ours.shape[1] == 128
    assert np.array_equal(mask, want_mask) and mask.dtype == bool
    assert np.abs(ours - want).max() < 1e-5


def test_log_mel_follows_the_checkpoints_preprocessor_config(speech, tmp_path):
    """Another checkpoint's settings (LiteRT-LM's mel range and floor, per-bin normalization):
    transformers built from the same file gives the same features."""
    from transformers import Gemma3nAudioFeatureExtractor

    rng = np.random.default_rng(0)
    cfg = {"feature_extractor_type": "Gemma3nAudioFeatureExtractor", "feature_size": 128, "sampling_rate": 16000,
           "max_frequency": 7500.0, "mel_floor": 1e-6, "dither": 0.0, "input_scale_factor": 1.0,
           "per_bin_mean": rng.normal(-5, 1, 128).tolist(), "per_bin_stddev": rng.uniform(0.5, 2, 128).tolist()}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    samples = audio.load_speech(speech)
    ours, _ = audio.log_mel(samples, audio.MelConfig.from_file(tmp_path / "preprocessor_config.json"))
    want = Gemma3nAudioFeatureExtractor.from_pretrained(str(tmp_path))(samples, return_tensors="np")["input_features"][0]
    assert np.abs(ours - want).max() < 1e-5
    assert np.abs(ours - audio.log_mel(samples)[0]).max() > 1  # the settings matter


@pytest.mark.parametrize("content,needle", [
    (b"not a wav at all", "not a WAV file"),
    (b"RIFF\x04\x00\x00\x00WAVE", "needs a fmt and a data chunk"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x06\x00\x01\x00\x40\x1f\x00\x00\x40\x1f\x00\x00\x01\x00\x08\x00"
     b"data\x00\x00\x00\x00", "unsupported WAV encoding (format 6"),  # A-law
    (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x00\x00\x40\x1f\x00\x00\x40\x1f\x00\x00\x01\x00\x08\x00"
     b"data\x00\x00\x00\x00", "0 channels"),
    (b"RIFF\xff\xff\xff\x7fWAVEfmt \xff\xff\xff\x7f", "needs a fmt and a data chunk"),  # sizes past the end
])
def test_hostile_wavs_are_one_line(content, needle, tmp_path):
    (tmp_path / "x.wav").write_bytes(content)
    with pytest.raises(EdgepackError, match=None) as e:
        audio.load_speech(tmp_path / "x.wav")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_clips_past_30_s_and_odd_rates_are_refused(tmp_path):
    sox("-n", "-r", "8000", str(tmp_path / "long.wav"), "synth", "31", "sine", "440")
    with pytest.raises(EdgepackError, match="31.0 s long; .* at most 30 s per clip"):
        audio.load_speech(tmp_path / "long.wav")
    sox("-n", "-r", "96000", str(tmp_path / "hi.wav"), "synth", "1", "sine", "440")
    with pytest.raises(EdgepackError, match="96,000 Hz is outside 8,000-48,000 Hz"):
        audio.load_speech(tmp_path / "hi.wav")
