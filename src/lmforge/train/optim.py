"""AdamW with decay only on matrices, and the learning-rate schedules."""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer

from lmforge.config import OptimConfig


def build_optimizer(
    model: nn.Module, config: OptimConfig, device: torch.device, shard_over_ranks: bool = False
) -> torch.optim.Optimizer:
    """AdamW; weight decay on >= 2-D weights only (matrices and embeddings, not norms or biases).

    shard_over_ranks (ZeRO-1): each rank keeps the AdamW state of, and updates, only its share of
    the parameters, then broadcasts them (torch's ZeroRedundancyOptimizer).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel is one launch for all parameters; foreach is the portable fallback.
    fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in (
        "cuda",
        "cpu",
    )
    options = {
        "lr": config.lr,
        "betas": (config.beta1, config.beta2),
        "eps": config.eps,
        "fused": fused or None,
        "foreach": None if fused else True,
    }
    if shard_over_ranks:
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, **options)
    return torch.optim.AdamW(groups, **options)


def local_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds this rank's state (ZeRO keeps its shard in `.optim`)."""
    return optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer


def lr_at(step: int, max_steps: int, config: OptimConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cosine":
        span = max(max_steps - config.warmup_steps, 1)
        progress = min((step - config.warmup_steps) / span, 1.0)
        return config.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (
            config.lr - config.min_lr
        )
    # Warmup-stable-decay: hold the peak, then decay linearly to min_lr over the last stretch,
    # reaching it on the final step (like warmup, which reaches the peak on its last step).
    decay_steps = max(int(max_steps * config.decay_fraction), 1)
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return config.lr
    progress = min((step - decay_start + 1) / decay_steps, 1.0)
    return config.lr + progress * (config.min_lr - config.lr)
