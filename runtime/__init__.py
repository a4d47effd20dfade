"""edgepack's runtime: numpy, ai-edge-litert, onnxruntime and tokenizers; never torch."""

from edgepack.runtime.generate import Generator
from edgepack.runtime.sampling import SamplingParams

__all__ = ["Generator", "SamplingParams"]
