"""model.safetensors written one tensor at a time reads back, through the safetensors library,
bitwise as the tensors that were written: every dtype a checkpoint holds, odd shapes, a scalar."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from lmforge.checkpoint.stream_weights import SafetensorsStream
from lmforge.models.row_layouts import plain_rows


def test_a_streamed_file_is_what_safetensors_reads_back(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(7, 5, generator=generator),
        "b.bias": torch.randn(3, generator=generator).to(torch.bfloat16),
        "c.half": torch.randn(2, 3, 4, generator=generator).half(),
        "d.count": torch.tensor(11, dtype=torch.int64),
        "e.empty": torch.zeros(0, 4),
        "f.mask": torch.tensor([True, False, True]),
    }
    path = tmp_path / "model.safetensors"
    stream = SafetensorsStream(path, [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()])
    for name, tensor in tensors.items():
        stream.write(name, tensor)
    stream.finish()
    loaded = safetensors.torch.load_file(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_a_stream_refuses_tensors_out_of_order_or_missing(tmp_path):
    entries = [("a", torch.float32, (2,)), ("b", torch.float32, (3,))]
    stream = SafetensorsStream(tmp_path / "m.safetensors", entries)
    with pytest.raises(AssertionError):
        stream.write("b", torch.zeros(3))
    stream.write("a", torch.zeros(2))
    with pytest.raises(AssertionError, match="1 of 2 written"):
        stream.finish()
    stream.close()


def test_plain_rows_undoes_a_row_order():
    rows = torch.tensor([2, 0, 3, 1])
    plain = torch.arange(8.0).view(4, 2)
    assert torch.equal(plain_rows("w", plain[rows], {"w": rows}), plain)
    assert plain_rows("other", plain, {"w": rows}) is plain
