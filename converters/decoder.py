"""The checkpoint's weights read into the family's decoder graph (built on the meta device by the
planner) by name: the graph mirrors the checkpoint's tensor names, so there is no mapping table."""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from edgepack.converters import quant_plan
from edgepack.converters.source import Source
from edgepack.errors import EdgepackError

def load_weights(model: torch.nn.Module, src: Source, quantized: dict | None = None,
                 progress=sys.stderr, only: set[str] | None = None) -> None:
    """Every parameter by its own name (the graph mirrors the checkpoint's naming), one tensor at a
    time, or just those in `only`. Tensors in `quantized` (ONNX plans) are read in row blocks,
    rounded and swapped for their quantized module as they come, so the float model never exists
    whole: exporting full-size E2B/E4B holds the quantized weights and one float tensor at most."""
    from edgepack.converters import onnx_quant

    quantized = quantized or {}
    params = {n: p for n, p in model.named_parameters() if only is None or n in only}
    bar = tqdm(params.items(), desc="reading weights", unit="tensor", leave=False, file=progress,
               disable=None if progress else True)
    for name, p in bar:
        shape = tuple(src.shapes[name]) if name in src.shapes else tuple(src.read(name).shape)
        if shape != tuple(p.shape):
            raise EdgepackError(f"{name}: checkpoint shape {shape}, config implies {tuple(p.shape)}")
        if name in quantized:
            onnx_quant.swap_in(model, {name: quant_plan.qtensor(quantized[name], src)})
            continue
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._parameters[attr] = torch.nn.Parameter(
            torch.from_numpy(src.read(name)), requires_grad=False)


def unload_weights(model: torch.nn.Module, names: list[str]) -> None:
    """Back to the meta device: a piece converted (litertlm_pieces) no longer needs its weights."""
    for name in names:
        owner, _, attr = name.rpartition(".")
        p = model.get_submodule(owner)._parameters[attr]
        model.get_submodule(owner)._parameters[attr] = torch.nn.Parameter(
            torch.empty(p.shape, device="meta"), requires_grad=False)
