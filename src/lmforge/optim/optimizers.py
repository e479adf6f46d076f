"""The optimizers (AdamW, or Muon with AdamW) and the learning-rate schedules."""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer

from lmforge.config import OptimConfig
from lmforge.errors import ConfigError
from lmforge.optim.muon import Muon
from lmforge.runtime import bf16_is_fast


class MuonAdamW:
    """Muon and AdamW stepped as one optimizer, which is all the loop and GradScaler need
    (param_groups, step, zero_grad); checkpoints reach the two through `inner_optimizers`."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.optimizers = (muon, adamw)

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.optimizers[0].state_dict(), "adamw": self.optimizers[1].state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizers[0].load_state_dict(state["muon"])
        self.optimizers[1].load_state_dict(state["adamw"])


def check_optimizer_config(config: OptimConfig, strategy: str) -> None:
    """Fail before any data preparation on a combination the optimizer cannot train."""
    if config.name == "muon" and strategy in ("zero1", "fsdp"):
        # Muon orthogonalises whole matrices: FSDP's shards are not, and ZeRO-1 wraps one class.
        raise ConfigError(
            f"optim.name='muon' does not support parallel.strategy='{strategy}'; use "
            "parallel.strategy='ddp' with muon, or optim.name='adamw'"
        )
    own_peaks = config.name == "muon" or config.embedding_lr is not None
    if own_peaks and (config.lr <= 0 or config.muon_lr <= 0 or (config.embedding_lr or 1) <= 0):
        # The schedule scales the other peaks by their ratio to lr.
        raise ConfigError(
            "optim.lr, optim.muon_lr and optim.embedding_lr must be positive with "
            "optim.name='muon' or an optim.embedding_lr"
        )


EMBEDDING = "token_embedding.weight"


def muon_parameter(name: str, param: nn.Parameter) -> bool:
    """Muon's share: the hidden matrices of the transformer layers. Embeddings and the LM head
    are lookups and a classifier rather than hidden maps, and vectors cannot be orthogonalised."""
    return param.dim() == 2 and name.startswith("layers.")


def _adamw(groups: list[dict], config: OptimConfig, device: torch.device, zero: bool):
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
    if zero:
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, **options)
    return torch.optim.AdamW(groups, **options)


def _adamw_groups(named: list[tuple[str, nn.Parameter]], config: OptimConfig) -> list[dict]:
    """Weight decay on >= 2-D weights only (matrices and embeddings, not norms or biases); the
    token embedding in a group of its own when it has its own learning rate."""
    embedding = [(n, p) for n, p in named if config.embedding_lr is not None and n == EMBEDDING]
    named = [(n, p) for n, p in named if not (config.embedding_lr is not None and n == EMBEDDING)]
    groups = [
        {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
    ]
    if embedding:
        ratio = config.embedding_lr / config.lr
        params = [p for _, p in embedding]
        groups.append({"params": params, "weight_decay": config.weight_decay, "lr_ratio": ratio})
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: nn.Module, config: OptimConfig, device: torch.device, shard_over_ranks: bool = False
) -> torch.optim.Optimizer | MuonAdamW:
    """AdamW (config.name 'adamw'), or Muon for the layers' matrices with AdamW for the rest
    ('muon'); weight decay on >= 2-D weights only.

    shard_over_ranks (ZeRO-1): each rank keeps the AdamW state of, and updates, only its share of
    the parameters, then broadcasts them (torch's ZeroRedundancyOptimizer).
    """
    check_optimizer_config(config, "zero1" if shard_over_ranks else "ddp")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if config.name == "adamw":
        return _adamw(_adamw_groups(named, config), config, device, shard_over_ranks)
    matrices = [p for n, p in named if muon_parameter(n, p)]
    rest = [(n, p) for n, p in named if not muon_parameter(n, p)]
    if not matrices:  # nothing for Muon to take (e.g. only non-layer weights train)
        return _adamw(_adamw_groups(rest, config), config, device, False)
    # The loop sets every group's lr to schedule x lr_ratio, so one schedule drives both.
    muon = Muon(
        [{"params": matrices, "lr_ratio": config.muon_lr / config.lr}],
        lr=config.muon_lr,
        weight_decay=config.weight_decay,
        momentum=config.muon_momentum,
        ns_dtype=torch.bfloat16 if bf16_is_fast(device) else torch.float32,
    )
    return MuonAdamW(muon, _adamw(_adamw_groups(rest, config), config, device, False))


def set_lr(optimizer: torch.optim.Optimizer | MuonAdamW, lr: float) -> None:
    """The scheduled lr (of optim.lr) into every group, scaled for groups with their own peak."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)


def local_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds this rank's state (ZeRO keeps its shard in `.optim`)."""
    return optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer


def inner_optimizers(optimizer: torch.optim.Optimizer | MuonAdamW) -> list[torch.optim.Optimizer]:
    """The torch optimizers that hold this rank's state (Muon and AdamW for MuonAdamW)."""
    local = local_optimizer(optimizer)
    return list(local.optimizers) if isinstance(local, MuonAdamW) else [local]


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
