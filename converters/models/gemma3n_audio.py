"""Gemma 3n's audio path for export: the audio tower (subsampling convolutions, conformer blocks
with chunked local attention) and `embed_audio`, which maps its output into the text model's
embedding space.

The graph is transformers' own `Gemma3nAudioEncoder` and `Gemma3nMultimodalEmbedder`, built with
empty weights and read by name like the text decoder (the checkpoint's `model.audio_tower.*` and
`model.embed_audio.*`). Unlike the text decoder it is not re-authored: nothing in it differs
between the formats yet (no KV cache, no row store), so the reference's module is the graph.

What reaches the decoder, as transformers' `Gemma3nModel.forward` builds it:
- each clip becomes `soft_tokens` embeddings (188 for Gemma 3n), the encoder's output through
  `embed_audio`, its padded frames and the rest of the 188 filled with the embedding of the
  audio vocabulary's last token;
- `<start_of_audio>` is an ordinary text token; every id at or above `multimodal_offset` (the
  vision vocabulary's start) takes its embedding from a multimodal embedder instead of
  `embed_tokens`: `<end_of_audio>` from `embed_audio`'s own 128-row vocabulary, an id of the vision
  vocabulary (262,144-262,271) from `embed_vision`'s. Those rows are a fixed table (`vocab_table`),
  kept as a float row store beside the graph. The vision tower is not exported, but its
  vocabulary's ids are tokens like any other: a prompt may hold them, a sampler may pick them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import torch
from torch import nn

TOWER, EMBEDDER, VISION_EMBEDDER = "model.audio_tower.", "model.embed_audio.", "model.embed_vision."
ENCODER_FILE = "audio_encoder.onnx"
VOCAB_STORE = "multimodal_vocab"
# A .litertlm's encoder takes a fixed number of log-mel frames (LiteRT-LM splits longer input into
# chunks of it and encodes each alone): 3,008 holds a whole 30 s clip (2,997 frames), so no clip
# is ever split, and is a multiple of the encoder's 16x shrink (LiteRT-LM requires one).
ENCODER_FRAMES = 3008


@dataclasses.dataclass(frozen=True)
class AudioSettings:
    """What the prompt builder and the runtime need, from the checkpoint's config.json."""
    soft_tokens: int  # audio_soft_tokens_per_image: soft tokens per clip
    start_id: int  # boa_token_id: <start_of_audio>
    soft_id: int  # audio_token_id: <audio_soft_token>
    end_id: int  # eoa_token_id: <end_of_audio>
    vocab_offset: int  # the audio vocabulary's first id
    vocab_size: int  # rows of embed_audio's own vocabulary
    multimodal_offset: int  # ids from here on take a multimodal embedder's embedding

    @classmethod
    def from_hf(cls, full: dict) -> "AudioSettings":
        audio = full["audio_config"]
        vision = full.get("vision_config") or {}
        return cls(
            soft_tokens=int(full.get("audio_soft_tokens_per_image", 188)),
            start_id=int(full.get("boa_token_id", 256_000)),
            soft_id=int(full.get("audio_token_id", 262_273)),
            end_id=int(full.get("eoa_token_id", 262_272)),
            vocab_offset=int(audio.get("vocab_offset", 262_272)),
            vocab_size=int(audio.get("vocab_size", 128)),
            multimodal_offset=int(vision.get("vocab_offset", audio.get("vocab_offset", 262_272))),
        )


class AudioGraph(nn.Module):
    """(log-mel features [1, T, 128], their mask [1, T] True where valid) ->
    (soft token embeddings [1, T', hidden], mask [1, T'] True where valid)."""

    def __init__(self, audio_config: dict, text_config: dict):
        super().__init__()
        from accelerate import init_empty_weights
        from transformers import Gemma3nAudioConfig, Gemma3nTextConfig
        from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nMultimodalEmbedder

        audio, text = Gemma3nAudioConfig(**audio_config), Gemma3nTextConfig(**text_config)
        self.model = nn.Module()
        # parameters on the meta device until read by name; the buffers (position timescales,
        # local attention masks) are computed here, as the reference computes them
        with init_empty_weights(include_buffers=False):
            self.model.audio_tower = Gemma3nAudioEncoder(audio)
            self.model.embed_audio = Gemma3nMultimodalEmbedder(audio, text)
        self.eval()

    def forward(self, features: torch.Tensor, mask: torch.Tensor):
        out = self.model.audio_tower(features, ~mask, return_dict=True)
        return self.model.embed_audio(inputs_embeds=out.last_hidden_state), ~out.audio_mel_mask

    def vocab_table(self, settings: AudioSettings, src) -> tuple[int, np.ndarray]:
        """The multimodal vocabularies' embeddings, [rows, hidden] float32, and the id of row 0:
        embed_vision's over its ids when the checkpoint has it (they run up to the audio
        vocabulary's), then embed_audio's over its own (this graph's embedder, loaded)."""
        with torch.no_grad():
            ids = torch.arange(settings.vocab_offset, settings.vocab_offset + settings.vocab_size)[None]
            table = self.model.embed_audio(input_ids=ids)[0].float().numpy()
            vision = _vision_embedder(src)
            if vision is None or vision.vocab_offset + vision.vocab_size != settings.vocab_offset:
                return settings.vocab_offset, table
            ids = torch.arange(vision.vocab_offset, settings.vocab_offset)[None]
            return vision.vocab_offset, np.concatenate([vision(input_ids=ids)[0].float().numpy(), table])

    @classmethod
    def from_source(cls, src) -> "AudioGraph":
        return cls(src.audio["config"]["audio_config"], src.config)


def _vision_embedder(src):
    """transformers' embed_vision with the checkpoint's weights, or None when it has none."""
    from accelerate import init_empty_weights
    from transformers import Gemma3nTextConfig, Gemma3nVisionConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nMultimodalEmbedder

    from edgepack.converters.decoder import load_weights

    vision = src.audio["config"].get("vision_config")
    if not isinstance(vision, dict) or not any(n.startswith(VISION_EMBEDDER) for n in src.shapes):
        return None
    holder = nn.Module()
    holder.model = nn.Module()
    with init_empty_weights(include_buffers=False):
        holder.model.embed_vision = Gemma3nMultimodalEmbedder(Gemma3nVisionConfig(**vision),
                                                              Gemma3nTextConfig(**src.config))
    load_weights(holder, src, progress=None)
    return holder.model.embed_vision.eval()


def graph_tensors(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The checkpoint's tensors the audio graph reads, with their shapes: every one of the audio
    tower and embed_audio but embed_audio's vocabulary (AudioGraph.vocab_table's row store). The
    planner takes them from the checkpoint's headers, so planning imports no transformers modules
    (100-160 MB, resident for the rest of an export)."""
    return {n: tuple(s) for n, s in shapes.items()
            if n.startswith((TOWER, EMBEDDER)) and n != EMBEDDER + "embedding.weight"}


def shrink(audio_config) -> int:
    """Log-mel frames per soft token: the subsampling convolutions' time strides, then every
    conf_reduction_factor-th frame (Gemma 3n: 2 x 2 x 4 = 16)."""
    return math.prod(s[0] for s in audio_config.sscp_conv_stride_size) * audio_config.conf_reduction_factor


@dataclasses.dataclass
class EncoderPiece:
    """One piece of LiteRT-LM's `tf_lite_audio_encoder_hw` signature (`src_inputs` [1, frames, 128]
    and `mask` [1, frames], true where valid, in; `features` [1, frames/16, audio hidden] and
    `mask` out), converted on its own and stitched (converters/litertlm_export.convert_audio):
    converted whole, E2B's 0.68B-parameter tower took 9 GB."""
    name: str
    module: nn.Module
    params: list[str]  # the AudioGraph's parameters it reads
    inputs: dict[str, str]  # piece input -> wire: the signature's input, or "<piece>.<output>"
    outputs: dict[str, str]  # the signature's output -> piece output


def encoder_pieces(graph: AudioGraph) -> list[EncoderPiece]:
    """The tower as transformers' `Gemma3nAudioEncoder.forward` runs it, cut between its modules:
    the subsampling convolutions (with the mask cut to their frames), each conformer block, and
    the reduction to every conf_reduction_factor-th frame. Between pieces the mask is the
    reference's (true where padded)."""
    tower = graph.model.audio_tower

    def params(prefix: str) -> list[str]:
        return [n for n, _ in graph.named_parameters() if n.startswith(TOWER + prefix)]

    pieces = [EncoderPiece("audio_subsample", _Subsample(tower), params("subsample_conv_projection."),
                           {"src_inputs": "src_inputs", "mask": "mask"}, {})]
    hidden = "audio_subsample.hidden"
    for i, block in enumerate(tower.conformer):
        pieces.append(EncoderPiece(f"audio_conformer_{i}", _Block(block), params(f"conformer.{i}."),
                                   {"hidden": hidden, "padded": "audio_subsample.padded"}, {}))
        hidden = f"audio_conformer_{i}.hidden"
    pieces.append(EncoderPiece("audio_reduce", _Reduce(tower.config.conf_reduction_factor), [],
                               {"hidden": hidden, "padded": "audio_subsample.padded"},
                               {"features": "features", "mask": "mask"}))
    return pieces


class _Subsample(nn.Module):
    def __init__(self, tower):
        super().__init__()
        self.subsample_conv_projection = tower.subsample_conv_projection
        self.stride = math.prod(s[0] for s in tower.config.sscp_conv_stride_size)

    def forward(self, src_inputs, mask):
        hidden = self.subsample_conv_projection(src_inputs)
        # each subsampled frame takes the mask of the first input frame it covers, as the reference
        at = torch.clamp(torch.arange(hidden.shape[1]) * self.stride, max=mask.shape[1] - 1)
        return {"hidden": hidden, "padded": ~mask[:, at]}


class _Block(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, hidden, padded):
        return {"hidden": self.block(hidden, padded)}


class _Reduce(nn.Module):
    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, hidden, padded):
        hidden, padded = hidden[:, ::self.factor], padded[:, ::self.factor]
        return {"features": hidden.masked_fill(padded[..., None], 0.0), "mask": ~padded}


class LiteRtAdapter(nn.Module):
    """`tf_lite_audio_adapter`: the encoder's mask and features in, soft tokens out. LiteRT-LM
    binds the encoder's mask to input 0 and its features to input 1, and a signature lists its
    inputs by name: `audio_mask` sorts before `features`."""

    def __init__(self, graph: AudioGraph):
        super().__init__()
        self.embed_audio = graph.model.embed_audio

    def forward(self, audio_mask, features):
        return {"features": self.embed_audio(inputs_embeds=features) * audio_mask[..., None]}


class LiteRtEndOfAudio(nn.Module):
    """`tf_lite_end_of_audio`: no input, the embedding of <end_of_audio> [1, 1, hidden] (embed_audio's,
    as for every id of the audio vocabulary)."""

    def __init__(self, graph: AudioGraph, end_id: int):
        super().__init__()
        self.embed_audio, self.end_id = graph.model.embed_audio, end_id

    def forward(self):
        return {"eoa_embedding": self.embed_audio(input_ids=torch.tensor([[self.end_id]]))}


@contextlib.contextmanager
def tflite_friendly():
    """The reference's chunked attention cuts key/value blocks with `unfold`, which TFLite cannot
    pad (a 6-D tensor): the same blocks gathered by index while converting."""
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioAttention

    def blocks(self, x):
        x = self._pad_dim1(x, self.max_past_horizon, self.max_future_horizon + self.chunk_size - 1)
        n = (x.shape[1] - self.context_size) // self.chunk_size + 1
        at = (torch.arange(n)[:, None] * self.chunk_size + torch.arange(self.context_size)[None]).reshape(-1)
        return torch.index_select(x, 1, at).reshape(x.shape[0], n, self.context_size, *x.shape[2:])

    original = Gemma3nAudioAttention._extract_block_context
    Gemma3nAudioAttention._extract_block_context = blocks
    try:
        yield
    finally:
        Gemma3nAudioAttention._extract_block_context = original
