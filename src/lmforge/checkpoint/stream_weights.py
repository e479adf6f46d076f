"""model.safetensors written one tensor at a time, so a sharded model is never whole anywhere.

The safetensors format is a length-prefixed JSON header (every tensor's dtype, shape and byte
range) followed by the raw bytes in that order. The header needs only the shapes, which a
sharded (or meta) model knows, so it is written first and each tensor's bytes follow as soon as
that one tensor has been gathered (FSDP/TP: `full_tensor`, a collective) or read (an offline
consolidate: one tensor from the sharded state). The safetensors library writes only from a
dict of every tensor in memory; the file it reads back is the same.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from lmforge.models.config import ModelConfig
from lmforge.models.row_layouts import current_rows, plain_rows
from lmforge.parallel.dist import DistInfo

SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

Entry = tuple[str, torch.dtype, tuple[int, ...]]


class SafetensorsStream:
    """Write `entries` (name, dtype, shape), in order, one `write` each; `close` checks all came."""

    def __init__(self, path: Path, entries: list[Entry]) -> None:
        header, offset = {}, 0
        for name, dtype, shape in entries:
            size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[name] = {
                "dtype": SAFETENSORS_DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
        self.entries, self.written = entries, 0
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close(), after every tensor)
        self.file.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected_name, dtype, shape = self.entries[self.written]
        assert (name, tensor.dtype, tuple(tensor.shape)) == (expected_name, dtype, shape), name
        self.file.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        self.written += 1

    def close(self) -> None:
        """Close the file; a stream closed early (an error) leaves a partial file to delete."""
        self.file.close()

    def finish(self) -> None:
        assert self.written == len(self.entries), f"{self.written} of {len(self.entries)} written"
        self.close()


def weight_entries(state: dict[str, torch.Tensor], config: ModelConfig) -> list[Entry]:
    """What model.safetensors holds of a state dict: a tied head is stored once (as the
    embedding), as checkpoint/directory.py save_weights stores it."""
    names = [n for n in state if not (config.tie_embeddings and n == "lm_head.weight")]
    return [(n, state[n].dtype, tuple(state[n].shape)) for n in names]


def stream_sharded_weights(model: nn.Module, path: Path, info: DistInfo) -> None:
    """Collective: every rank gathers each tensor in turn; rank 0 writes it and drops it."""
    state = model.state_dict()
    entries = weight_entries(state, model.config)
    rows = current_rows(model)
    stream = SafetensorsStream(path, entries) if info.is_main else None
    try:
        for name, _, _ in entries:
            tensor = state[name]
            full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            if stream is not None:
                stream.write(name, plain_rows(name, full, rows))
            del full
        if stream is not None:
            stream.finish()
    finally:
        if stream is not None:
            stream.close()
