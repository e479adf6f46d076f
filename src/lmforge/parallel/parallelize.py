"""Apply a parallel strategy to a model from the outside, in torchtitan's order:
activation checkpointing, then compile, then FSDP2 / DDP. The model never sees a process group
and its parameter names never change (so checkpoints are the same for every strategy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from lmforge.config import ParallelConfig
from lmforge.errors import ConfigError
from lmforge.models.moe import moe_layers
from lmforge.models.transformer import Transformer
from lmforge.parallel.activation_checkpointing import apply_activation_checkpointing
from lmforge.parallel.dist import DistInfo
from lmforge.runtime import DTYPES


def needs_process_group(config: ParallelConfig) -> bool:
    """zero1 and fsdp shard over a process group even at world size 1."""
    return config.strategy in ("zero1", "fsdp")


def check_parallel_config(config: ParallelConfig, dtype: str) -> None:
    if config.strategy == "fsdp" and dtype == "fp16":
        raise ConfigError(
            "parallel.strategy='fsdp' with train.dtype='fp16' is not supported (it needs a sharded "
            "gradient scaler); use train.dtype='bf16'"
        )
    if config.cpu_offload and config.strategy != "fsdp":
        raise ConfigError("parallel.cpu_offload needs parallel.strategy='fsdp'")


@dataclass
class ParallelModel:
    """`model` holds the parameters (unwrapped, stable names); `forward` is what to call."""

    model: Transformer
    forward: nn.Module
    ddp: DistributedDataParallel | None = None
    fsdp: bool = False

    def reshard(self) -> None:
        """FSDP: free the gathered weights an evaluation (forward without backward) left behind,
        so parameters are the sharded ones again (as the optimizer and checkpoints expect)."""
        if self.fsdp:
            for module in self.model.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Synchronise gradients only on the last micro-step of an accumulation."""
        if self.fsdp:
            self.model.set_requires_gradient_sync(enabled)
            yield
        elif self.ddp is not None and not enabled:
            with self.ddp.no_sync():
                yield
        else:
            yield


def parallelize(
    model: Transformer,
    config: ParallelConfig,
    info: DistInfo,
    dtype: str,
    compile: bool,
    materialize: Callable[[Transformer], None] | None = None,
) -> ParallelModel:
    """`model` may be built on the meta device: then `materialize` gives it storage and its
    starting weights at the point where each rank's share is known (after sharding for FSDP,
    before DDP, which needs real tensors to wrap)."""
    apply_activation_checkpointing(model.layers, config.activation_checkpointing)
    if config.strategy == "fsdp":
        if compile:  # per block, before sharding, as FSDP2 recommends
            for block in model.layers:
                block.compile()
        _fully_shard(model, config, info, dtype)
        if materialize is not None:
            materialize(model)
        return ParallelModel(model, model, fsdp=True)
    if materialize is not None:
        materialize(model)
    ddp = None
    forward: nn.Module = model
    if info.world_size > 1:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        # An MoE expert that no token picked in a step has no gradient this step.
        unused = bool(moe_layers(model))
        ddp = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=unused)
        forward = ddp
    if compile:
        forward = torch.compile(forward)
    return ParallelModel(model, forward, ddp=ddp)


def _fully_shard(model: Transformer, config: ParallelConfig, info: DistInfo, dtype: str) -> None:
    options = {"mesh": init_device_mesh(info.device.type, (info.world_size,))}
    if dtype != "fp32":  # gather parameters in the compute dtype; reduce gradients in fp32
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=DTYPES[dtype], reduce_dtype=torch.float32
        )
    if config.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for block in model.layers:
        fully_shard(block, **options)
    fully_shard(model, **options)  # the embeddings, final norm and (tied) head


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm; returns the norm before clipping (a plain tensor)."""
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if isinstance(norm, DTensor):  # FSDP: the norm of sharded gradients, reduced over ranks
        norm = norm.full_tensor()
    return norm
