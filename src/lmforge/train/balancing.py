"""Load balancing of Mixture-of-Experts models, behind a hook the training loop calls.

The loop knows no model family: it adds `extra_loss` to what it minimises, calls `after_step`
after each optimizer step, and logs `metrics`. For MoE models these are the Switch/GShard
auxiliary loss, the auxiliary-loss-free router-bias update (arXiv 2408.15664) and the expert-load
statistics of models/moe.py. The bias update needs the expert loads summed over data-parallel
ranks; that collective lives here, on the parallel side, and reaches the model as a `reduce`
function, so models/ never touches torch.distributed.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from lmforge.models.moe import (
    expert_load_metrics,
    moe_aux_loss,
    moe_layers,
    update_router_biases,
)
from lmforge.parallel.dist import DistInfo, sum_over_ranks


class BalancingHook(Protocol):
    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term to add to the minimised loss of the last training forward (already weighted)."""
        ...

    def after_step(self, model: nn.Module) -> None:
        """State updates after each optimizer step (identical on every rank)."""
        ...

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Scalars for the metrics log since the last call."""
        ...


class NoBalancing:
    """Dense models: nothing to add, update or report."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def after_step(self, model: nn.Module) -> None:
        pass

    def metrics(self, model: nn.Module) -> dict[str, float]:
        return {}


class MoEBalancing:
    """The auxiliary loss, the router-bias update with loads summed over ranks, and load stats."""

    def __init__(self, info: DistInfo):
        self.info = info

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return moe_aux_loss(model)

    def after_step(self, model: nn.Module) -> None:
        update_router_biases(model, reduce=self._sum_over_ranks)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        return expert_load_metrics(model)

    def _sum_over_ranks(self, load: torch.Tensor) -> torch.Tensor:
        return sum_over_ranks(load, self.info)


def balancing_hook(model: nn.Module, info: DistInfo) -> BalancingHook:
    """The hook for this (plain, not yet parallelised) model."""
    return MoEBalancing(info) if moe_layers(model) else NoBalancing()
