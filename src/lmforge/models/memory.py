"""Memory per GPU of the model states (weights, gradients, AdamW moments) under each strategy.

Training keeps fp32 weights (4 bytes a parameter), fp32 gradients (4) and two fp32 AdamW
moments (8): 16 bytes a parameter in all (bf16 autocast and FSDP's bf16 gathers only add
transient copies). DDP replicates all of it; ZeRO-1 shards the moments; FSDP shards everything
(and briefly gathers one block at a time in the compute dtype). Activations come on top and
depend on the micro-batch, sequence length and activation checkpointing.
"""

from __future__ import annotations

WEIGHT_BYTES, GRADIENT_BYTES, ADAMW_BYTES = 4, 4, 8


def model_state_bytes(parameters: int, strategy: str, world_size: int) -> float:
    if strategy == "ddp":
        return parameters * (WEIGHT_BYTES + GRADIENT_BYTES + ADAMW_BYTES)
    if strategy == "zero1":
        return parameters * (WEIGHT_BYTES + GRADIENT_BYTES + ADAMW_BYTES / world_size)
    if strategy == "fsdp":
        return parameters * (WEIGHT_BYTES + GRADIENT_BYTES + ADAMW_BYTES) / world_size
    raise ValueError(f"unknown strategy {strategy!r}")
