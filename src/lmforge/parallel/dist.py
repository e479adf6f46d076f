"""The process group: who am I (rank, world size, device), set up from torchrun's environment.

One code path for every scale: a plain `lmforge train` is world size 1 with no process group
(unless a sharding strategy needs one, which then gets a private single-rank group). Under
torchrun (or `lmforge launch`) RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR come from the
environment and the backend is nccl on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from lmforge import errors
from lmforge.errors import ConfigError, LmforgeError
from lmforge.runtime import pick_device

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None
    """None when no process group exists (a plain single process)."""
    tensor_parallel: int = 1
    """Ranks that split each layer between them (and so see the same data)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def data_rank(self) -> int:
        """Which data-parallel replica this rank belongs to (its tensor-parallel group)."""
        return self.rank // self.tensor_parallel

    @property
    def data_ranks(self) -> int:
        """Data-parallel replicas: the ranks that read different batches."""
        return self.world_size // self.tensor_parallel

    @property
    def initialized(self) -> bool:
        return self.backend is not None


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def elastic_restart_count() -> int:
    """How many times torchrun's elastic agent has restarted this worker group (0 at first)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def resolve_backend(name: str, device: torch.device) -> str:
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise ConfigError(
            "parallel.backend='nccl' needs CUDA GPUs but this run is on "
            f"{device.type}; use parallel.backend='gloo' (or 'auto')"
        )
    return name


def init_distributed(
    device_name: str, backend: str, need_group: bool, timeout_s: float = 600.0
) -> DistInfo:
    """Pick this rank's device and join the process group (if launched by torchrun, or if
    `need_group` asks for a single-rank group, e.g. for FSDP in one process)."""
    if not launched_by_torchrun():
        device = pick_device(device_name, "train.device")
        if device.type == "cuda":  # bind the index: NCCL and DCP use the current device
            device = torch.device(
                "cuda", torch.cuda.current_device() if device.index is None else device.index
            )
            torch.cuda.set_device(device)
        resolved = resolve_backend(backend, device)
        if not need_group:
            return DistInfo(0, 0, 1, device, None)
        if not dist.is_initialized():
            dist.init_process_group(resolved, store=dist.HashStore(), rank=0, world_size=1)
        return DistInfo(0, 0, 1, device, resolved)

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, "train.device")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "launch at most one process per GPU (--nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    resolved = resolve_backend(backend, device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(
            resolved,
            store=_attempt_store(rank, world_size, timeout),
            rank=rank,
            world_size=world_size,
            timeout=timeout,
            device_id=device if device.type == "cuda" else None,
        )
    return DistInfo(rank, local_rank, world_size, device, resolved)


def _attempt_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store, with keys private to this attempt of the worker group.

    torchrun's agent keeps one store for every restart of the group, so without a prefix a
    restarted rank can read the address a dead rank published and fail to connect to it."""
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=rank == 0 and not agent_hosts_store,
        timeout=timeout,
    )
    return dist.PrefixStore(f"lmforge/attempt-{elastic_restart_count()}", store)


def shutdown(info: DistInfo) -> None:
    if info.initialized and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.initialized and info.world_size > 1:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a tensor over ranks (a copy; the input is unchanged)."""
    value = value.detach().clone()
    if info.initialized and info.world_size > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def sum_over_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    value = value.detach().clone()
    if info.initialized and info.world_size > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def main_first(info: DistInfo, work: Callable[[], T]) -> T:
    """Run `work` on rank 0, then on the other ranks (which find it done, e.g. prepared data).

    A user error on rank 0 is raised on every rank, instead of leaving the others waiting."""
    if not (info.initialized and info.world_size > 1):
        return work()
    status: list = [None]
    if info.is_main:
        try:
            result = work()
        except LmforgeError as error:
            status = [(type(error).__name__, str(error))]
    dist.broadcast_object_list(status, src=0)
    if status[0] is not None:
        kind, message = status[0]
        raise getattr(errors, kind, LmforgeError)(message)
    if not info.is_main:
        result = work()
    return result


def decided_by_main(info: DistInfo, decide: Callable[[], T]) -> T:
    """Run `decide` on rank 0 only and give its (picklable) result to every rank; a user error
    on rank 0 is raised on every rank."""
    if not (info.initialized and info.world_size > 1):
        return decide()
    box: list = [None, None]
    if info.is_main:
        try:
            box = [decide(), None]
        except LmforgeError as error:
            box = [None, (type(error).__name__, str(error))]
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        kind, message = box[1]
        raise getattr(errors, kind, LmforgeError)(message)
    return box[0]
