"""Speech for Gemma 3n, in numpy alone: WAV files in (PCM 8/16/24/32-bit or float, any channel
count, 8-48 kHz), 16 kHz mono float32 out, and the log-mel features its audio encoder takes.

`log_mel` equals transformers' `Gemma3nAudioFeatureExtractor` for the checkpoint's
preprocessor_config.json (tests/test_audio.py checks it on speech). LiteRT-LM's C++ frontend uses
other constants (mel range to 7,500 Hz, floor 1e-6, input scale 32,768, per-bin normalization):
edgepack follows the checkpoint, which is what the encoder was trained with.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError

SAMPLE_RATE = 16_000
MAX_SECONDS = 30  # the encoder's window: transformers' extractor cuts a longer clip at 480,000 samples
RATES = (8_000, 48_000)
MAX_WAV_BYTES = 256 << 20
_FLOAT, _PCM, _EXTENSIBLE = 3, 1, 0xFFFE


# --- WAV -----------------------------------------------------------------------------------------

def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples, rate): float32 in [-1, 1], channels mixed to mono by their mean."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_WAV_BYTES + 1)
    except OSError as e:
        raise EdgepackError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_WAV_BYTES:
        raise EdgepackError(f"{path} is over {MAX_WAV_BYTES >> 20} MiB: far more than {MAX_SECONDS} s of speech")
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise EdgepackError(f"{path} is not a WAV file (no RIFF/WAVE header)")
    fmt = data = None
    at = 12
    while at + 8 <= len(raw):  # chunks: id, little-endian size, body padded to an even length
        cid, size = raw[at:at + 4], int.from_bytes(raw[at + 4:at + 8], "little")
        body = raw[at + 8:at + 8 + size]
        if cid == b"fmt ":
            fmt = body
        elif cid == b"data":
            data = body  # a writer that streamed may leave the size too large: take what is there
        at += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16 or data is None:
        raise EdgepackError(f"{path}: a WAV file needs a fmt and a data chunk")
    tag, channels, rate = (int.from_bytes(fmt[i:j], "little") for i, j in ((0, 2), (2, 4), (4, 8)))
    align, bits = int.from_bytes(fmt[12:14], "little"), int.from_bytes(fmt[14:16], "little")
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = int.from_bytes(fmt[24:26], "little")  # the sub-format GUID starts with the format tag
    if channels < 1 or align != channels * ((bits + 7) // 8):
        raise EdgepackError(f"{path}: {channels} channels of {bits}-bit samples in {align}-byte frames")
    frames = np.frombuffer(data, np.uint8, len(data) // align * align).reshape(-1, channels, align // channels)
    samples = _decode(frames, tag, bits, path)
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32), rate


def _decode(b: np.ndarray, tag: int, bits: int, path: Path) -> np.ndarray:
    """(frames, channels, bytes) -> float values, full scale 1."""
    if tag == _FLOAT and bits in (32, 64):
        return b.copy().view("<f4" if bits == 32 else "<f8")[..., 0].astype(np.float64)
    if tag == _PCM and bits == 8:
        return (b[..., 0].astype(np.float64) - 128) / 128  # 8-bit WAV is unsigned
    if tag == _PCM and bits in (16, 24, 32):
        n = bits // 8  # little-endian two's complement, widened to 32 bits from the top
        wide = np.zeros(b.shape[:2] + (4,), np.uint8)
        wide[..., 4 - n:] = b
        return wide.view("<i4")[..., 0].astype(np.float64) / 2.0**31
    raise EdgepackError(f"{path}: unsupported WAV encoding (format {tag}, {bits}-bit): use PCM or float")


# --- resampling ----------------------------------------------------------------------------------

def resample(x: np.ndarray, rate: int, to: int = SAMPLE_RATE, block: int = 1 << 15) -> np.ndarray:
    """Polyphase windowed-sinc resampling by to/rate: a Kaiser-windowed (beta 5) low-pass at the
    lower Nyquist rate, 10 zero crossings each side, unity gain at DC (the design of
    scipy.signal.resample_poly's default, which tests/test_audio.py checks it against). Output
    blocks of `block` samples bound the memory."""
    if rate == to:
        return np.asarray(x, np.float32)
    g = math.gcd(rate, to)
    up, down = to // g, rate // g
    half = 10 * max(up, down)
    n = np.arange(2 * half + 1) - half
    h = np.sinc(n / max(up, down)) * np.kaiser(2 * half + 1, 5.0)
    h *= up / h.sum()
    taps = -(-len(h) // up)
    phases = np.pad(h, (0, up * taps - len(h))).reshape(taps, up).T  # phases[p, k] = h[p + k * up]
    out_len = -(-len(x) * up // down)
    xp = np.concatenate([np.zeros(taps), np.asarray(x, np.float64), np.zeros(taps)])
    out = np.empty(out_len, np.float32)
    for start in range(0, out_len, block):
        t = np.arange(start, min(start + block, out_len)) * down + half
        idx = (t // up)[:, None] - np.arange(taps)[None, :] + taps
        out[start:start + len(t)] = np.einsum("nk,nk->n", phases[t % up], xp[idx])
    return out


def load_speech(path: str | Path) -> np.ndarray:
    """A WAV file as 16 kHz mono float32, at most the encoder's 30 s (longer is refused: the
    reference extractor would drop the rest without a word)."""
    samples, rate = read_wav(path)
    if not RATES[0] <= rate <= RATES[1]:
        raise EdgepackError(f"{path}: {rate:,} Hz is outside {RATES[0]:,}-{RATES[1]:,} Hz")
    if not len(samples):
        raise EdgepackError(f"{path} has no samples")
    if not np.any(samples):
        raise EdgepackError(f"{path} is silent (every sample is 0)")
    if len(samples) > MAX_SECONDS * rate:
        raise EdgepackError(f"{path} is {len(samples) / rate:.1f} s long; Gemma 3n's audio encoder takes at most "
                            f"{MAX_SECONDS} s per clip: split it")
    return resample(samples, rate)


# --- log-mel features ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MelConfig:
    """The feature extractor's settings, named as preprocessor_config.json names them."""
    feature_size: int = 128
    sampling_rate: int = SAMPLE_RATE
    frame_length_ms: float = 32.0
    hop_length_ms: float = 10.0
    min_frequency: float = 125.0
    max_frequency: float = 7600.0
    preemphasis: float = 0.97
    preemphasis_htk_flavor: bool = True
    fft_overdrive: bool = True
    input_scale_factor: float = 1.0
    mel_floor: float = 1e-5
    per_bin_mean: tuple[float, ...] | None = None
    per_bin_stddev: tuple[float, ...] | None = None
    padding_value: float = 0.0

    @classmethod
    def from_file(cls, path: str | Path) -> "MelConfig":
        """A checkpoint's preprocessor_config.json."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise EdgepackError(f"{path}: not a readable JSON file ({e})") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "features") -> "MelConfig":
        """The feature extractor's keys (others ignored), checked: a bundle's copy is untrusted.
        transformers saves the frame and hop in samples (`frame_length`, `hop_length`)."""
        if not isinstance(raw, dict):
            raise EdgepackError(f"{where}: the audio features' settings must be an object")
        if raw.get("dither", 0.0):
            raise EdgepackError(f"{where}: dither {raw['dither']!r} adds random noise; edgepack's features are deterministic")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in names}
        rate = kw.get("sampling_rate", SAMPLE_RATE)
        for key in ("frame_length", "hop_length"):
            if type(raw.get(key)) is int and type(rate) is int and rate > 0:
                kw[f"{key}_ms"] = raw[key] * 1000.0 / rate
        try:
            cfg = cls(**kw)
            ok = (cfg.sampling_rate == SAMPLE_RATE and 1 <= cfg.feature_size <= 512
                  and 1 <= cfg.frame_length <= 4096 and 1 <= cfg.hop_length <= cfg.frame_length
                  and 0 <= cfg.min_frequency < cfg.max_frequency <= cfg.sampling_rate / 2
                  and 0 <= cfg.preemphasis < 1 and cfg.mel_floor > 0 and math.isfinite(cfg.input_scale_factor)
                  and all(len(v or ()) in (0, cfg.feature_size) for v in (cfg.per_bin_mean, cfg.per_bin_stddev))
                  and cfg.fft_length >= cfg.frame_length)
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise EdgepackError(f"{where}: not a 16 kHz log-mel frontend edgepack can compute")
        return cfg

    @property
    def frame_length(self) -> int:
        return int(round(self.sampling_rate * self.frame_length_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        return int(round(self.sampling_rate * self.hop_length_ms / 1000.0))

    @property
    def fft_length(self) -> int:
        return 2 ** math.ceil(math.log2(self.frame_length)) * (2 if self.fft_overdrive else 1)


def mel_filters(cfg: MelConfig) -> np.ndarray:
    """(fft_length // 2 + 1, feature_size) triangles on the HTK mel scale, unnormalized."""
    freqs = np.arange(cfg.fft_length // 2 + 1, dtype=np.float32) * (cfg.sampling_rate / cfg.fft_length)
    mel = np.linspace(2595.0 * math.log10(1.0 + cfg.min_frequency / 700.0),
                      2595.0 * math.log10(1.0 + cfg.max_frequency / 700.0), cfg.feature_size + 2)
    edges = 700.0 * (10 ** (mel / 2595.0) - 1.0)
    width = np.diff(edges)
    slopes = edges[None, :] - freqs[:, None]
    rising, falling = -slopes[:, :-2] / width[:-1], slopes[:, 2:] / width[1:]
    return np.maximum(np.zeros(1, np.float32), np.minimum(rising, falling))


def log_mel(samples: np.ndarray, cfg: MelConfig = MelConfig(), pad_to: int = 128,
            length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features [frames, feature_size] float32, mask [frames] bool) of one 16 kHz clip: padded
    with silence to a multiple of `pad_to` samples, or to `length` (a batch's longest clip; the
    mask marks the frames that start in the clip), framed at frame_length + 1 samples every hop, HTK pre-emphasis, a periodic Hann
    window, |rFFT|, mel triangles, log with a floor."""
    x = np.asarray(samples, np.float32)
    if len(x) > MAX_SECONDS * cfg.sampling_rate:
        raise EdgepackError(f"{len(x) / cfg.sampling_rate:.1f} s of audio; the encoder takes at most {MAX_SECONDS} s per clip")
    n = max(length or 0, -(-len(x) // pad_to) * pad_to)
    wave = np.full(n, cfg.padding_value, np.float32)
    wave[:len(x)] = x
    valid = np.arange(n) < len(x)
    if cfg.input_scale_factor != 1.0:
        wave = wave * cfg.input_scale_factor
    size, hop = cfg.frame_length + 1, cfg.hop_length
    count = max(0, (n - size) // hop + 1)
    frames = np.lib.stride_tricks.as_strided(wave, (count, size), (wave.strides[0] * hop, wave.strides[0]))
    if cfg.preemphasis > 0 and cfg.preemphasis_htk_flavor:
        frames = np.concatenate([frames[:, :1] * (1.0 - cfg.preemphasis),
                                 frames[:, 1:-1] - cfg.preemphasis * frames[:, :-2]], axis=-1)
    elif cfg.preemphasis > 0:
        frames = frames[:, 1:] - cfg.preemphasis * frames[:, :-1]
    else:
        frames = frames[:, :-1]
    window = (0.5 * (1 - np.cos(2 * np.pi * np.arange(cfg.frame_length, dtype=np.float32) / cfg.frame_length)))
    spectrum = np.abs(np.fft.rfft(frames * window.astype(np.float32), n=cfg.fft_length, axis=-1))
    features = np.log(np.maximum(spectrum @ mel_filters(cfg), np.float64(cfg.mel_floor)))
    if cfg.per_bin_mean is not None:
        features = features - np.asarray(cfg.per_bin_mean)
    if cfg.per_bin_stddev is not None:
        features = features / np.asarray(cfg.per_bin_stddev)
    return features.astype(np.float32), valid[::hop][:count]
