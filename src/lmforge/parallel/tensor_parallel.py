"""Tensor parallelism (Megatron-style, with DTensor's parallelize_module), applied from outside
the model before FSDP shards the other mesh dimension, as torchtitan does.

Per block: the fused qkv (and MLA's query and kv_up) and the FFN's up projection are split by
output rows (column-wise), attention's and the FFN's output projections by input columns
(row-wise), so each rank computes its own heads and its own slice of the FFN and one reduction
per sub-layer joins them. With sequence parallelism the residual stream between sub-layers is
split along the sequence: norms (and dropout) run on 1/tp of the tokens, the gather happens
just before the column-wise matmul and the reduction becomes a reduce-scatter.

What stays whole on every rank: MoE layers (router and experts compute on the gathered
tokens; expert parallelism is not implemented), MLA's shared latent projection, and the norms
without sequence parallelism. The embedding is split by vocabulary rows and the head by
vocabulary columns; a tied pair shares the one split parameter.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from lmforge.errors import ConfigError
from lmforge.models.config import ModelConfig, layer_configs
from lmforge.models.lora import lora_layers
from lmforge.models.row_layouts import tensor_parallel_rows, use_tensor_parallel_rows


def check_tensor_parallel(config: ModelConfig, degree: int, sequence_parallel: bool) -> None:
    """One-line errors for shapes a degree cannot split."""
    if degree == 1:
        return
    if config.position == "alibi":
        raise ConfigError(
            "parallel.tensor_parallel > 1 does not support ALiBi positions (its per-head slopes "
            "are not split); use parallel.tensor_parallel = 1"
        )
    if sequence_parallel and config.position == "sinusoidal":
        raise ConfigError(
            "sequence parallelism does not support sinusoidal positions; set "
            "parallel.sequence_parallel = false"
        )
    for i, layer in enumerate(layer_configs(config)):
        where = f"layer {i}"
        heads = [("num_heads", layer.num_heads)]
        if layer.attention != "mla":
            heads.append(("num_kv_heads", layer.kv_heads))
        for name, count in heads:
            if count % degree:
                raise ConfigError(
                    f"parallel.tensor_parallel={degree} does not divide {where}'s {name}={count} "
                    "(each rank takes whole heads); pick a degree that divides it"
                )
        if layer.ffn != "moe" and layer.hidden_dim % degree:
            raise ConfigError(
                f"parallel.tensor_parallel={degree} does not divide {where}'s FFN width "
                f"{layer.hidden_dim}; pick a degree that divides it"
            )


def apply_tensor_parallel(model: nn.Module, mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """Split `model` (on any device, meta included) over the 1-D `mesh`, in place. A model that
    already holds weights (fine-tuning builds it whole) has its fused rows regrouped first."""
    if not model.token_embedding.weight.is_meta:
        with torch.no_grad():
            for name, rows in tensor_parallel_rows(model).items():
                tensor = model.get_parameter(name)
                tensor.copy_(tensor[rows])
    use_tensor_parallel_rows(model)
    # parallelize_module re-registers parameters, and SequenceParallel makes every one trainable:
    # LoRA's frozen base must stay frozen.
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    between = Shard(1) if sequence_parallel else Replicate()  # the residual stream's layout
    local = not sequence_parallel  # plain tensors between sub-layers unless sequence-split
    tied = model.config.tie_embeddings
    embedding = RowwiseParallel(input_layouts=Replicate(), output_layouts=between)
    embedding.use_local_output = local
    plan = {"token_embedding": embedding}
    if model.config.position == "learned":
        plan["position_embedding"] = embedding
    if sequence_parallel:
        plan["final_norm"] = SequenceParallel()
    parallelize_module(model, mesh, plan)
    if tied:  # the head takes the embedding's split parameter (vocabulary rows) as its own
        model.lm_head.weight = model.token_embedding.weight
    head = ColwiseParallel(input_layouts=between, output_layouts=Replicate())
    parallelize_module(model.lm_head, mesh, head)
    if tied:
        model.lm_head.weight = model.token_embedding.weight
    for block in model.layers:
        plan, after = _block_plan(block, between, local, sequence_parallel)
        parallelize_module(block, mesh, plan)
        parallelize_module(block, mesh, after)
        if block.config.attention == "mla":
            _sum_rope_key_gradients(block.attn, mesh.get_group())
    _place_adapters(model, mesh)
    for name, param in model.named_parameters():
        param.requires_grad_(trainable[name])


def _place_adapters(model: nn.Module, mesh: DeviceMesh) -> None:
    """LoRA beside a split linear: in a column-wise one, A stays whole and B splits with the
    output rows; in a row-wise one, A splits with the input columns and B stays whole."""
    for _, module in lora_layers(model):
        column_wise = module.weight.placements[0] == Shard(0)
        placements = ([Replicate()], [Shard(0)]) if column_wise else ([Shard(1)], [Replicate()])
        for key, placement in zip(("lora_a", "lora_b"), placements, strict=True):
            tensor = getattr(module, key)
            if isinstance(tensor, DTensor):
                tensor = tensor.redistribute(mesh, placement)
            else:
                tensor = distribute_tensor(tensor, mesh, placement)
            module.register_parameter(key, nn.Parameter(tensor, requires_grad=True))


class _SumGradientColumns(torch.autograd.Function):
    """Identity forward; backward sums the gradient's last columns over the group (Megatron's
    'copy to the tensor-parallel region', for part of a tensor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, start: int, group) -> torch.Tensor:
        ctx.start, ctx.group = start, group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        tail = grad[..., ctx.start :].contiguous()
        dist.all_reduce(tail, group=ctx.group)
        grad[..., ctx.start :] = tail
        return grad, None, None


def _sum_rope_key_gradients(attn: nn.Module, group) -> None:
    """MLA's shared RoPE key (the last columns of kv_down's output) feeds every head directly,
    so each rank's backward holds only its heads' share of its gradient: sum the shares. (The
    latent part reaches the heads through kv_up, whose column-parallel input already sums.)"""
    start = attn.rank

    def hook(module, inputs, output):
        return _SumGradientColumns.apply(output, start, group)

    attn.kv_down.register_forward_hook(hook)


class _RowwiseParallel(RowwiseParallel):
    """RowwiseParallel that skips a LoRA linear's dropout submodule (torch's visits every
    submodule of the linear and expects each to have a weight)."""

    def _partition_linear_fn(self, name, module, device_mesh):
        if isinstance(module, nn.Linear):
            super()._partition_linear_fn(name, module, device_mesh)


def _block_plan(block: nn.Module, between, local: bool, sequence_parallel: bool):
    """(plan for the block, a second plan for modules that need a hook on each side)."""
    gather_args = PrepareModuleInput(
        input_layouts=(between, None, None, None),
        desired_input_layouts=(Replicate(), None, None, None),
        use_local_output=True,
    )
    gather = PrepareModuleInput(
        input_layouts=(between,), desired_input_layouts=(Replicate(),), use_local_output=True
    )
    out = _RowwiseParallel(output_layouts=between, use_local_output=local)
    plan: dict = {"attn.out": out}
    after: dict = {}
    if sequence_parallel:
        plan.update({"attn_norm": SequenceParallel(), "ffn_norm": SequenceParallel()})
        plan.update({"attn": gather_args, "ffn": gather})
    if block.config.attention == "mla":
        query = "attn.q" if hasattr(block.attn, "q") else "attn.q_up"
        plan.update({query: ColwiseParallel(), "attn.kv_up": ColwiseParallel()})
    else:
        plan["attn.qkv"] = ColwiseParallel()
    if block.config.ffn != "moe":
        plan.update({"ffn.up": ColwiseParallel(), "ffn.down": out})
    elif sequence_parallel:  # every rank routes all the tokens, then keeps its sequence share
        after["ffn"] = PrepareModuleOutput(
            output_layouts=Replicate(), desired_output_layouts=Shard(1), use_local_output=False
        )
    return plan, after
