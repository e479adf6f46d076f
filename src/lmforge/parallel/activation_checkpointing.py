"""Activation checkpointing of transformer blocks, applied from outside the model.

Each block's forward is replaced on the instance (parameter names stay unchanged) by one that
runs under torch.utils.checkpoint. `full` keeps only the block's input and recomputes the whole
block in the backward pass. `selective` keeps matmul and attention outputs (the expensive ops)
and recomputes the cheap elementwise ones (norms, activations, residual adds): most of the
memory saving of recomputation for a small slowdown.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

_aten = torch.ops.aten
_SAVED_OPS = {
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
}
_cudnn = getattr(_aten, "_scaled_dot_product_cudnn_attention", None)
if _cudnn is not None:
    _SAVED_OPS.add(_cudnn.default)


def _save_expensive_ops(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts():
    return create_selective_checkpoint_contexts(_save_expensive_ops)


def apply_activation_checkpointing(blocks: nn.ModuleList, mode: str) -> None:
    """mode: none, selective or full (see the module docstring)."""
    if mode == "none":
        return
    options = {"use_reentrant": False, "preserve_rng_state": True}
    if mode == "selective":
        options["context_fn"] = _selective_contexts
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, **options)
