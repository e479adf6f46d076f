"""Load a torch.distributed.checkpoint directory with nothing unpickled and nothing left unfilled.

DCP's DefaultLoadPlanner hands every *bytes* item of a checkpoint to
`torch.load(value, weights_only=False)`: a crafted `.metadata` that declares an entry as bytes,
with a pickle in the `.distcp` file, runs code on resume. lmforge writes only tensors (scalars
such as AdamW's `step` are 0-d tensors), so `SafeLoadPlanner` refuses any bytes item outright,
and `SafeReader.read_data` refuses one again before reading it. Tensor chunks are read by
`torch.load(weights_only=True)`.

The planner also checks that the chunks it reads cover every element of every tensor it fills,
exactly once. Without that, a forged index that lists too few chunks leaves the tensor as it was
(random init, or `torch.empty`'s uninitialised memory) and the load "succeeds".
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import BytesStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem

from lmforge.errors import CheckpointError, LmforgeError
from lmforge.parallel.safe_reader import SafeReader, refuse_bytes_item


def _local_numel(value: torch.Tensor) -> int:
    local = value.to_local() if hasattr(value, "to_local") else value  # DTensor: this rank's shard
    return local.numel()


def _overlap(a: ReadItem, b: ReadItem) -> bool:
    return all(
        oa < ob + lb and ob < oa + la
        for oa, la, ob, lb in zip(a.dest_offsets, a.lengths, b.dest_offsets, b.lengths, strict=True)
    )


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner that loads tensors only, and only when every element gets filled."""

    def __init__(self, directory: Path):
        super().__init__()
        self.directory = Path(directory)
        self.planned: set[tuple] = set()
        self.committed: set[tuple] = set()

    def create_local_plan(self) -> LoadPlan:
        for key in self.state_dict:
            entry = self.metadata.state_dict_metadata.get(key)
            if isinstance(entry, BytesStorageMetadata) or not isinstance(
                self.state_dict[key], torch.Tensor
            ):
                raise refuse_bytes_item(self.directory, key)
            saved_shape = tuple(getattr(entry, "size", ()))
            if entry is not None and saved_shape != tuple(self.state_dict[key].shape):
                raise CheckpointError(
                    f"{self.directory}: '{key}' is {saved_shape} in the checkpoint but "
                    f"{tuple(self.state_dict[key].shape)} here; use the checkpoint's own config"
                )
        plan = super().create_local_plan()
        self._check_coverage(plan.items)
        self.planned = {self._item_id(item) for item in plan.items}
        return plan

    def _check_coverage(self, items: list[ReadItem]) -> None:
        by_key: dict[str, list[ReadItem]] = {key: [] for key in self.state_dict}
        for item in items:
            if item.type == LoadItemType.BYTE_IO:
                raise refuse_bytes_item(self.directory, item.dest_index.fqn)
            by_key.setdefault(item.dest_index.fqn, []).append(item)
        for key, chunks in by_key.items():
            filled = sum(math.prod(chunk.lengths) for chunk in chunks)
            overlapping = any(_overlap(a, b) for a, b in itertools.combinations(chunks, 2))
            if filled != _local_numel(self.state_dict[key]) or overlapping:
                raise CheckpointError(
                    f"{self.directory}: the index's chunks of '{key}' do not cover the tensor "
                    "exactly once (a corrupt or forged .metadata); use another checkpoint"
                )

    @staticmethod
    def _item_id(item: ReadItem) -> tuple:
        return (item.dest_index.fqn, tuple(item.dest_offsets), tuple(item.lengths))

    def load_bytes(self, read_item: ReadItem, value) -> None:
        raise refuse_bytes_item(self.directory, read_item.dest_index.fqn)

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        self.committed.add(self._item_id(read_item))

    def check_filled(self) -> None:
        missing = self.planned - self.committed
        if missing:
            key = sorted(missing)[0][0]
            raise CheckpointError(
                f"{self.directory}: '{key}' was not read in full; use another checkpoint"
            )


def _first_failure(error: CheckpointException) -> BaseException:
    for failure in error.failures.values():
        exception = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(exception, LmforgeError):
            return exception
    failure = next(iter(error.failures.values()), None)
    return (failure[0] if isinstance(failure, tuple) else failure) or error


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


def safe_dcp_load(state: dict, directory: Path, no_dist: bool) -> None:
    """dcp.load with SafeReader and SafeLoadPlanner; any failure is one CheckpointError line."""

    planner = SafeLoadPlanner(directory)
    try:
        dcp.load(state, storage_reader=SafeReader(directory), planner=planner, no_dist=no_dist)
    except LmforgeError:
        raise
    except CheckpointException as error:
        failure = _first_failure(error)
        if isinstance(failure, LmforgeError):
            raise failure from None
        raise CheckpointError(
            f"{directory} could not be read ({type(failure).__name__}: {one_line(failure)}); it "
            "is corrupt or was not written by lmforge: use another checkpoint"
        ) from None
    except (RuntimeError, ValueError, KeyError, AssertionError, OSError, EOFError) as error:
        raise CheckpointError(
            f"{directory} could not be read ({type(error).__name__}: {one_line(error)}); use "
            "another checkpoint"
        ) from None
    planner.check_filled()
