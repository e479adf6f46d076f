"""LoRA (Hu et al. 2021): y = W x + b + (alpha / rank) * B A dropout(x), W frozen, A and B trained.

Adapted layers stay nn.Linear (a subclass), so the base weights keep their names
(`layers.0.attn.qkv.weight`) and the adapters sit beside them (`layers.0.attn.qkv.lora_a`,
`.lora_b`): a base checkpoint loads into an adapted model unchanged, and parameter names stay
stable for the optimizer-state checkpoint. B starts at zero, so an adapted model starts out
computing exactly what its base does.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.lora_config import LoraConfig

ADAPTER_KEYS = ("lora_a", "lora_b")


class LoRALinear(nn.Linear):
    """An nn.Linear with a low-rank update; built from an existing Linear, sharing its tensors."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        nn.Module.__init__(self)  # not nn.Linear.__init__: reuse base's weight and bias as they are
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear and PEFT do
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.adapters_enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if not self.adapters_enabled:
            return y
        update = F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b)  # (..., out)
        return y + self.scaling * update

    def merged_weight(self) -> torch.Tensor:
        return self.weight + self.scaling * (self.lora_b @ self.lora_a)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_a.shape[0]}, scaling={self.scaling:g}"


def matches(name: str, pattern: str) -> bool:
    """A glob over the full module name, also as a dotted suffix; or `re:<regex>` (re.search)."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def target_modules(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names of the Linear layers that the patterns pick; every pattern must pick one."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [name for name in linears if any(matches(name, p) for p in patterns)]
    for pattern in patterns:
        if not any(matches(name, pattern) for name in linears):
            examples = sorted({name.split(".", 2)[-1] for name in linears if name != "lm_head"})
            raise ConfigError(
                f"finetune.lora.targets: {pattern!r} matches no linear layer; use module names "
                f"such as {', '.join(examples[:8])} (globs and re:<regex> work too)"
            )
    return chosen


def apply_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Freeze the model and put adapters on the targeted Linear layers, in place; their names."""
    if config.rank <= 0:
        raise ConfigError(f"finetune.lora.rank must be positive, got {config.rank}")
    names = target_modules(model, config.targets)
    for param in model.parameters():
        param.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        setattr(parent, child, LoRALinear(base, config.rank, config.alpha, config.dropout))
    return names


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def is_adapter_key(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ADAPTER_KEYS


def adapter_state(weights: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the adapter tensors of a model (or of a full state dict), for an adapter checkpoint."""
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    return {k: v.detach() for k, v in state.items() if is_adapter_key(k)}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The base model's forward (DPO's reference), without copying any weights."""
    layers = [module for _, module in lora_layers(model)]
    for module in layers:
        module.adapters_enabled = False
    try:
        yield
    finally:
        for module in layers:
            module.adapters_enabled = True


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain nn.Linear layers back, in place:
    the result has the base model's parameter names and computes what the adapted one did."""
    for name, module in list(lora_layers(model)):
        parent_name, _, child = name.rpartition(".")
        merged = nn.Linear(
            module.in_features, module.out_features, bias=module.bias is not None, device="meta"
        )
        merged.weight = nn.Parameter(module.merged_weight(), requires_grad=True)
        if module.bias is not None:
            merged.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=True)
        setattr(model.get_submodule(parent_name), child, merged)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
