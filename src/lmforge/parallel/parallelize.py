"""Apply a parallel strategy to a model from the outside, in torchtitan's order: tensor
parallelism, then activation checkpointing, then compile, then FSDP2 / DDP. The model never sees
a process group and its parameter names never change (so checkpoints are the same for every
strategy); a model built on the meta device gets its storage here, once its sharding is known.
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
from lmforge.parallel.tensor_parallel import apply_tensor_parallel, check_tensor_parallel
from lmforge.runtime import DTYPES


def needs_process_group(config: ParallelConfig) -> bool:
    """zero1 and fsdp shard over a process group even at world size 1."""
    return config.strategy in ("zero1", "fsdp")


def check_parallel_config(
    config: ParallelConfig, dtype: str, world_size: int | None = None
) -> None:
    """One-line errors for settings that cannot run (world_size: once the ranks are known)."""
    tp = config.tensor_parallel
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"parallel.tensor_parallel must be a whole number >= 1, got {tp}")
    if tp > 1 and config.strategy != "fsdp":
        raise ConfigError(
            f"parallel.tensor_parallel={tp} needs parallel.strategy='fsdp' (FSDP shards the "
            "other mesh dimension); set --parallel.strategy fsdp"
        )
    if world_size is not None and world_size % tp:
        raise ConfigError(
            f"parallel.tensor_parallel={tp} does not divide the {world_size} ranks; launch a "
            f"multiple of {tp} ranks (--nproc-per-node) or change the degree"
        )
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
        """DDP: synchronise gradients only on the last micro-step of an accumulation. FSDP
        reduce-scatters every micro-step: skipping it would keep the whole model's unsharded
        fp32 gradients on every rank between micro-steps, which is what FSDP is there to avoid."""
        if self.fsdp:
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
    check_parallel_config(config, dtype, info.world_size)
    data_mesh = None
    if config.tensor_parallel > 1:  # first, as torchtitan orders it: TP, AC, compile, FSDP
        check_tensor_parallel(model.config, config.tensor_parallel, config.sequence_parallel)
        mesh = init_device_mesh(
            info.device.type,
            (info.world_size // config.tensor_parallel, config.tensor_parallel),
            mesh_dim_names=("dp", "tp"),
        )
        apply_tensor_parallel(model, mesh["tp"], config.sequence_parallel)
        data_mesh = mesh["dp"]
    apply_activation_checkpointing(model.layers, config.activation_checkpointing)
    if config.strategy == "fsdp":
        if compile:  # per block, before sharding, as FSDP2 recommends
            for block in model.layers:
                block.compile()
        _fully_shard(model, config, info, dtype, data_mesh)
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


def layout_name(config: ParallelConfig, info: DistInfo) -> str:
    """How the run is spread, for the start-up line: e.g. 'fsdp 2 x tp 2 (sequence parallel)'."""
    if config.tensor_parallel == 1:
        return config.strategy
    sp = " (sequence parallel)" if config.sequence_parallel else ""
    return f"{config.strategy} {info.data_ranks} x tp {config.tensor_parallel}{sp}"


def _fully_shard(
    model: Transformer, config: ParallelConfig, info: DistInfo, dtype: str, mesh=None
) -> None:
    options = {"mesh": mesh or init_device_mesh(info.device.type, (info.world_size,))}
    if dtype != "fp32":  # gather parameters in the compute dtype; reduce gradients in fp32
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=DTYPES[dtype], reduce_dtype=torch.float32
        )
    if config.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for block in model.layers:
        fully_shard(block, **options)
    if not model.config.tie_embeddings:
        # Units of their own, so the vocabulary-sized tensors and their gradients are gathered
        # only while used, not for the whole step as the root's are. The head is needed again
        # first thing in backward, so it stays gathered in between.
        fully_shard(model.token_embedding, **options)
        fully_shard(model.lm_head, reshard_after_forward=False, **options)
    fully_shard(model, **options)  # the rest: final norm, positions, a tied embedding and head


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm; returns the norm before clipping (a plain tensor)."""
    params = [p for p in model.parameters() if p.grad is not None]
    meshes = {p.device_mesh for p in params if isinstance(p, DTensor)}
    if len(meshes) <= 1:  # one mesh (FSDP) or none: torch's own, all gradients at once
        norm = nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm
    # Tensor parallelism leaves some parameters on the 2-D mesh and the rest (whole on every
    # tensor-parallel rank) on the data-parallel one; DTensor does not mix meshes in one op.
    groups: dict = {}
    for p in params:
        groups.setdefault(p.device_mesh if isinstance(p, DTensor) else None, []).append(p)
    norms = []
    for group in groups.values():
        norm = nn.utils.get_total_norm([p.grad for p in group])
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    total = torch.linalg.vector_norm(torch.stack(norms))
    for group in groups.values():
        nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total
