"""Checkpoint reading: edgepack's own safetensors reader against the safetensors library, and the
row-block quantization the streaming export uses against whole-tensor rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from edgepack.converters import quantize, safetensors_file
from edgepack.converters.safetensors_file import SafetensorsFile
from edgepack.errors import EdgepackError


@pytest.fixture
def shard(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "bf16": torch.randn(37, 24, generator=g).to(torch.bfloat16),
        "f16": torch.randn(5, 3, 4, generator=g).to(torch.float16),
        "f32": torch.randn(11, generator=g),
        "scalar": torch.tensor(3.5),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("block", [None, 100])  # bf16 read a block at a time: whole, or 100 values
def test_reader_matches_the_safetensors_library(shard, block, monkeypatch):
    if block:
        monkeypatch.setattr(safetensors_file, "_BLOCK", block)
    ours, ref = SafetensorsFile(shard), safe_open(str(shard), framework="pt")
    assert sorted(ours.tensors) == sorted(ref.keys())
    for name in ref.keys():
        expected = ref.get_tensor(name).to(torch.float32).numpy()
        got = ours.read(name)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        assert ours.dtype(name) == ref.get_slice(name).get_dtype()
    rows = ref.get_slice("bf16")[9:30].to(torch.float32).numpy()
    np.testing.assert_array_equal(ours.read_rows("bf16", 9, 30), rows)


@pytest.mark.parametrize("cut", ["header", "data"])
def test_truncated_shard_is_refused(shard, cut):
    data = shard.read_bytes()
    shard.write_bytes(data[:6] if cut == "header" else data[:-40])
    with pytest.raises(EdgepackError, match="not a safetensors file" if cut == "header" else "truncated or corrupt"):
        SafetensorsFile(shard)


@pytest.mark.parametrize("bits,symmetric", [(4, False), (4, True), (8, True)])
def test_rounding_row_blocks_equals_rounding_the_whole_tensor(bits, symmetric):
    w = np.random.default_rng(1).standard_normal((100, 64)).astype(np.float32)
    whole = quantize.round_to_grid(w, bits, 32, symmetric)
    blocks = quantize.round_rows((w[i:i + 17] for i in range(0, 100, 17)), bits, 32, symmetric)
    np.testing.assert_array_equal(blocks.codes, whole.codes)
    np.testing.assert_array_equal(blocks.scales, whole.scales)
    if not symmetric:
        np.testing.assert_array_equal(blocks.zero_points, whole.zero_points)
