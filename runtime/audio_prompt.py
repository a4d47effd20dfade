"""Speech into a Gemma 3n prompt: clips -> log-mel features -> the bundle's audio encoder -> soft
token embeddings, and the token sequence that carries them, as transformers builds both.

- Features (audio.log_mel): the clips of one prompt padded with silence to the longest clip,
  rounded up to 128 samples, as `Gemma3nAudioFeatureExtractor` pads a batch; each frame's mask says
  whether it starts inside its clip.
- Soft tokens (`AudioEncoder`): the encoder graph's output; its padded frames, and the rest of the
  clip's `soft_tokens` (188), take the embedding of the audio vocabulary's last row, as
  transformers' `Gemma3nModel.forward` fills them.
- Placement (`expand`): each clip's place in the text holds MARK; `Gemma3nProcessor` replaces a
  clip's `<audio_soft_token>` by "\\n\\n<start_of_audio>" + soft tokens + "<end_of_audio>\\n\\n".
  Special tokens split a text before it is tokenized, so the text between two of them is
  tokenized alone: the same ids come from tokenizing the pieces between the marks with the
  "\\n\\n"s and putting the markers' ids between them.
The encoder graph is loaded when audio is first used, never before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edgepack.bundle import Bundle
from edgepack.errors import EdgepackError
from edgepack.plan import AUDIO_SECTIONS
from edgepack.runtime import audio
from edgepack.runtime.row_store import RowStore

MARK = "\ue002"  # a private-use character: where a clip goes in a prompt's text
Clip = str | Path | np.ndarray  # a WAV file, or 16 kHz mono samples in [-1, 1]


def features(clips: list[np.ndarray], cfg: audio.MelConfig, pad_to: int = 128) -> list[tuple[np.ndarray, np.ndarray]]:
    """(features, mask) per clip, every clip padded to the longest as one batch is."""
    longest = max(len(c) for c in clips)
    length = -(-longest // pad_to) * pad_to
    return [audio.log_mel(c, cfg, length=length) for c in clips]


def load(clip: Clip) -> np.ndarray:
    if isinstance(clip, (str, Path)):
        return audio.load_speech(clip)
    samples = np.asarray(clip, np.float32)
    if samples.ndim != 1 or not np.isfinite(samples).all():
        raise EdgepackError("an audio array must be 1-D finite 16 kHz samples")
    return samples


class AudioEncoder:
    """The bundle's audio graphs (ONNX: one graph on onnxruntime; .litertlm: LiteRT-LM's encoder
    and adapter sections), with what turns their output into soft tokens."""

    def __init__(self, b: Bundle, vocab: RowStore, threads: int | None = None):
        from edgepack.system import default_threads

        a = b.plan.audio
        self.settings = a
        self.mel = audio.MelConfig.from_dict(a.features, f"{b.path}: audio.features")
        threads = threads or default_threads()
        self._encode = self._onnx(b, threads) if b.format == "onnx" else self._litert(b, threads)
        # transformers pads with embed_audio(vocab_size - 1): the audio vocabulary's last row
        self.padding = vocab.gather(np.array([b.graph.vocab_size - 1 - a.vocab_offset]))[0].copy()

    @staticmethod
    def _onnx(b: Bundle, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = False  # a clip's activations go back when it is encoded
        try:
            session = ort.InferenceSession(str(b.file(b.plan.audio.encoder)), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise EdgepackError(f"onnxruntime cannot load {b.path}'s audio encoder: {str(e).splitlines()[0][:200]}") from None
        _check_names(b, "audio encoder", [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()],
                     ["input_features", "input_features_mask"], ["audio_embeddings", "audio_mask"])
        return lambda feats, mask: session.run(["audio_embeddings", "audio_mask"], {
            "input_features": feats[None], "input_features_mask": mask[None]})

    @staticmethod
    def _litert(b: Bundle, threads: int):
        """The encoder takes a fixed number of frames: the batch's features, then zeros (what
        LiteRT-LM feeds too, and what the reference's convolutions pad a batch with)."""
        from ai_edge_litert.interpreter import Interpreter

        runners = []
        for kind in AUDIO_SECTIONS:
            sec = next((s for s in b.graph.sections or [] if s.model_type == kind), None)
            if sec is None:
                raise EdgepackError(f"{b.path}: the .litertlm has no {kind} section")
            try:
                it = Interpreter(model_content=b.read_section(sec), num_threads=threads)
                runners.append(it.get_signature_runner(next(iter(it.get_signature_list()))))
            except Exception as e:  # LiteRT raises ValueError and RuntimeError, StopIteration without signatures
                raise EdgepackError(f"{b.path}: LiteRT cannot load its {kind} section: {str(e).splitlines()[0][:200]}") from None
        encoder, adapter = runners
        _check_names(b, AUDIO_SECTIONS[0], list(encoder.get_input_details()), list(encoder.get_output_details()),
                     ["mask", "src_inputs"], ["features", "mask"])
        _check_names(b, AUDIO_SECTIONS[1], list(adapter.get_input_details()), list(adapter.get_output_details()),
                     ["audio_mask", "features"], ["features"])
        frames = encoder.get_input_details()["src_inputs"]["shape"][1]

        def run(feats, mask):
            if len(feats) > frames:
                raise EdgepackError(f"a clip of {len(feats)} frames; the bundle's audio encoder takes {frames}")
            src, valid = np.zeros((1, frames, feats.shape[1]), np.float32), np.zeros((1, frames), bool)
            src[0, :len(feats)], valid[0, :len(mask)] = feats, mask
            out = encoder(src_inputs=src, mask=valid)
            emb = adapter(audio_mask=out["mask"], features=out["features"])["features"]
            return emb, out["mask"]
        return run

    def soft_tokens(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """[soft_tokens, hidden] per clip."""
        out = []
        for feats, mask in features(clips, self.mel):
            try:
                emb, valid = self._encode(feats, mask)
            except EdgepackError:
                raise
            except Exception as e:  # the engines' own exception types: a bundle whose graph and settings disagree
                raise EdgepackError(f"the audio encoder failed on a clip: {str(e).splitlines()[0][:200]}") from None
            emb, valid = emb[0], valid[0].astype(bool)
            n = self.settings.soft_tokens
            emb = emb[:valid.nonzero()[0].max() + 1 if valid.any() else 0]  # a fixed-length graph's tail
            if len(emb) > n:
                raise EdgepackError(f"a clip gives {len(emb)} audio tokens; the model takes {n} per clip")
            tokens = np.repeat(self.padding[None], n, axis=0)
            tokens[:len(emb)] = np.where(valid[:len(emb), None], emb, self.padding)
            out.append(tokens)
        return out


def _check_names(b: Bundle, what: str, inputs: list[str], outputs: list[str], want_in: list[str],
                 want_out: list[str]) -> None:
    if sorted(inputs) != sorted(want_in) or sorted(outputs) != sorted(want_out):
        raise EdgepackError(f"{b.path}: its {what} takes {sorted(inputs)} and gives {sorted(outputs)}; the audio "
                            f"contract is {want_in} -> {want_out}")


def expand(encode: Callable[[str], list[int]], text: str, a) -> list[int]:
    """The ids of `text` with a clip at each MARK: `encode` tokenizes a piece of text (special
    tokens as its caller decides), `a` is the manifest's audio. Without a MARK: encode(text)."""
    pieces = text.split(MARK)
    ids: list[int] = []
    for k, piece in enumerate(pieces):
        ids += encode(("\n\n" if k else "") + piece + ("\n\n" if k < len(pieces) - 1 else ""))
        if k < len(pieces) - 1:
            ids += [a.start_id] + [a.soft_id] * a.soft_tokens + [a.end_id]
    return ids
