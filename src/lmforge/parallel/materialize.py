"""Give a model built on the meta device real storage, only for what this rank owns.

The model is built on "meta" (shapes, no memory), parallelised there (FSDP turns each parameter
into a DTensor holding this rank's shard), and only then materialised: `to_empty` allocates the
local shards, and the initial values are written one tensor at a time. No rank ever allocates
the whole model; the largest transient is one full tensor (the embedding, usually), which the
seeded init draws whole so that every layout starts from the weights one process gets.

Weights from a file go the same way (`load_local`): each rank asks the source for the slices
it owns, so a safetensors file is read slice by slice, never whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import nn
from torch.distributed.tensor import DTensor

# Private in name only: DCP's own planners compute the same offsets with it.
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from lmforge.errors import CheckpointError
from lmforge.models.row_layouts import current_rows

Index = tuple[slice, ...]


class WeightSource(Protocol):
    """Tensors by state-dict name, readable a slice at a time (formats/weight_source.py)."""

    shapes: dict[str, tuple[int, ...]]

    def read(self, name: str, index: Index) -> torch.Tensor: ...


def local_index(tensor: torch.Tensor) -> Index:
    """The slice of the full tensor that this rank holds: all of it unless it is a DTensor."""
    if not isinstance(tensor, DTensor):
        return tuple(slice(0, size) for size in tensor.shape)
    shape, offset = compute_local_shape_and_global_offset(
        tensor.shape, tensor.device_mesh, tensor.placements
    )
    return tuple(slice(start, start + size) for start, size in zip(offset, shape, strict=True))


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """The storage this rank writes into (a DTensor's local shard, or the tensor itself)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@torch.no_grad()
def fill_from_full(tensor: torch.Tensor, full: torch.Tensor, rows: torch.Tensor | None) -> None:
    """Copy this rank's part of `full` (the whole logical tensor, in the files' row order) into
    `tensor`, whose rows may be reordered (`rows`, models/row_layouts.py)."""
    index = local_index(tensor)
    if rows is not None:
        full = full[rows[index[0]]]
        index = (slice(None), *index[1:])
    local_part(tensor).copy_(full[index])


@torch.no_grad()
def initialize(
    inits: Iterator[tuple[torch.Tensor, Callable[[torch.Tensor], object]]],
    rows: dict[int, torch.Tensor] | None = None,
) -> None:
    """Apply (tensor, init) pairs in order. A sharded tensor's init runs on a full-size scratch
    tensor, drawing the random stream exactly as one process does, and the shard is kept.
    rows: reordered rows by id(tensor)."""
    rows = rows or {}
    for tensor, init in inits:
        if isinstance(tensor, DTensor):
            full = torch.empty(tensor.shape, dtype=tensor.dtype, device=local_part(tensor).device)
            init(full)
            fill_from_full(tensor, full, rows.get(id(tensor)))
            del full
        else:
            init(tensor)


def materialize(model: nn.Module, device: torch.device) -> None:
    """Allocate a meta-built (and maybe sharded) model's local storage on `device` and
    initialise it with the model's seeded init (`weight_inits`)."""
    sharded = isinstance(model.lm_head.weight, DTensor)
    model.to_empty(device=device)
    if not sharded:  # FSDP keeps a tied pair as one DTensor; to_empty splits a plain one
        model.tie_weights()
    by_name = dict(model.named_parameters(remove_duplicate=False))
    rows = {id(by_name[name]): order for name, order in current_rows(model).items()}
    initialize(model.weight_inits(), rows)


@torch.no_grad()
def load_local(model: nn.Module, source: WeightSource, where: str) -> int:
    """Every tensor of `model`'s state dict from `source`, each rank reading only its slices;
    returns the bytes read. Names and shapes are checked against the source before any read."""
    state = model.state_dict()
    tied = {"lm_head.weight", "token_embedding.weight"} if model.config.tie_embeddings else set()
    missing = [name for name in state if name not in source.shapes and name not in tied]
    unexpected = [name for name in source.shapes if name not in state]
    wrong = [
        name
        for name, shape in source.shapes.items()
        if name in state and tuple(state[name].shape) != tuple(shape)
    ]
    if missing or unexpected or wrong:
        name = (wrong or missing or unexpected)[0]
        detail = f"{name} is {tuple(source.shapes[name])} there" if wrong else name
        raise CheckpointError(
            f"{where} does not fit this model ({detail}; missing {len(missing)}, unexpected "
            f"{len(unexpected)}, wrong shape {len(wrong)}); use the model config it was saved with"
        )
    bytes_read, reordered = 0, current_rows(model)
    for name, tensor in state.items():
        stored = name if name in source.shapes else next(iter(tied - {name}))
        block = _read_rows(source, stored, local_index(tensor), reordered.get(name))
        local_part(tensor).copy_(block)
        bytes_read += block.numel() * block.element_size()
    return bytes_read


def _read_rows(source: WeightSource, name: str, index: Index, rows: torch.Tensor | None):
    """The block at `index` of a tensor whose rows are reordered by `rows`: the runs of
    consecutive file rows are read one slice each (a few per rank: its q, k and v heads)."""
    if rows is None:
        return source.read(name, index)
    wanted = rows[index[0]].tolist()
    blocks, start = [], 0
    for i in range(1, len(wanted) + 1):
        if i == len(wanted) or wanted[i] != wanted[i - 1] + 1:
            run = slice(wanted[start], wanted[i - 1] + 1)
            blocks.append(source.read(name, (run, *index[1:])))
            start = i
    return torch.cat(blocks) if blocks else source.read(name, index)
