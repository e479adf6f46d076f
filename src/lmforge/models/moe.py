"""Mixture-of-Experts FFN (Mixtral, DeepSeek-V2/V3) and its training-loop hooks.

Routing: scores = softmax or sigmoid of the router logits; optional group-limited selection
(DeepSeek); top-k chosen on scores + a per-expert bias (auxiliary-loss-free balancing, arXiv
2408.15664) while the weights use the unbiased scores; optional renormalisation of the k weights
and a routed scaling factor. Dispatch sorts the (token, expert) assignments by expert, runs one
matmul per expert on its contiguous slice and scatters back with index_add (no loop over tokens).

Balancing pieces for the training loop (all take the whole model; the loop reaches them through
train/balancing.py, and the model knows nothing of process groups):
    moe_aux_loss(model)                  summed load-balancing loss of the last forward, or None
    update_router_biases(model, reduce)  bias += u * sign(mean_load - load) from the load since
                                         the last call, summed over ranks by `reduce` if given
    expert_load_stats(model)             per-layer load fractions and coefficient of variation
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.config import ModelConfig
from lmforge.models.ffn import FeedForward


class Router(nn.Module):
    """Top-k expert choice per token; returns weights (N, k) fp32, indices (N, k), scores (N, E)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.dim))
        if config.moe_bias_balancing:
            # Persistent: it is learned state (DeepSeek-V3's e_score_correction_bias), not a gradient.
            self.register_buffer("selection_bias", torch.zeros(config.num_experts))

    def forward(self, x: torch.Tensor):
        c = self.config
        logits = F.linear(x.float(), self.weight.float())  # routing in fp32, as the references do
        scores = logits.softmax(dim=-1) if c.moe_scoring == "softmax" else logits.sigmoid()
        choice = scores + self.selection_bias if c.moe_bias_balancing else scores
        if c.moe_groups > 1:
            grouped = choice.view(-1, c.moe_groups, c.num_experts // c.moe_groups)
            if c.moe_scoring == "softmax":  # DeepSeek-V2: a group is as good as its best expert
                group_scores = grouped.max(dim=-1).values
            else:  # DeepSeek-V3: the sum of its two best experts
                group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
            best = group_scores.topk(c.moe_topk_groups, dim=-1).indices
            keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)
            keep = keep.repeat_interleave(c.num_experts // c.moe_groups, dim=1)
            choice = choice.masked_fill(~keep, float("-inf"))
        indices = choice.topk(c.experts_per_token, dim=-1).indices
        weights = scores.gather(1, indices)
        if c.moe_norm_topk:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * c.moe_routed_scale, indices, scores


class Experts(nn.Module):
    """E SwiGLU experts stored as stacked weights: up (E, 2h, C) rows [gate; up], down (E, C, h)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, C, h = config.num_experts, config.dim, config.expert_dim
        self.up = nn.Parameter(torch.empty(E, 2 * h, C))
        self.down = nn.Parameter(torch.empty(E, C, h))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor):
        """x (N, C), weights/indices (N, k) -> (N, C): sum over k of weight * expert(x)."""
        k = indices.shape[1]
        flat = indices.reshape(-1)  # (N*k,) expert of each assignment
        order = flat.argsort(stable=True)  # assignments grouped by expert
        tokens = order // k  # the token each sorted assignment came from
        counts = torch.bincount(flat, minlength=self.up.shape[0]).tolist()
        routed = x[tokens]  # (N*k, C), contiguous per expert
        outputs = []
        for expert, rows in zip(range(len(counts)), routed.split(counts), strict=True):
            if rows.shape[0] == 0:
                continue
            gate, up = (rows @ self.up[expert].t()).chunk(2, dim=-1)
            outputs.append((F.silu(gate) * up) @ self.down[expert].t())
        y = torch.cat(outputs) * weights.reshape(-1)[order, None].to(x.dtype)
        return torch.zeros_like(x).index_add_(0, tokens, y.to(x.dtype))


class MoEFeedForward(nn.Module):
    """Routed experts plus optional always-on shared experts (one fused SwiGLU)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.router = Router(config)
        self.experts = Experts(config)
        self.shared = None
        if config.num_shared_experts:
            self.shared = FeedForward(config, config.expert_dim * config.num_shared_experts)
        # Assignment counts since the last bias update / stats read (not saved: they are transient).
        self.register_buffer("load_since_update", torch.zeros(config.num_experts), persistent=False)
        self.register_buffer("load_since_stats", torch.zeros(config.num_experts), persistent=False)
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        flat = x.reshape(-1, C)
        weights, indices, scores = self.router(flat)
        y = self.experts(flat, weights, indices).view(B, T, C)
        if self.shared is not None:
            y = y + self.shared(x)
        self.aux_loss = None
        if self.training:
            counts = torch.bincount(indices.reshape(-1), minlength=self.config.num_experts)
            with torch.no_grad():
                self.load_since_update += counts
                self.load_since_stats += counts
            if self.config.moe_aux_loss_coef > 0:
                self.aux_loss = self._balance_loss(counts, scores)
        return y

    def _balance_loss(self, counts: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # Switch Transformer / GShard: E * sum_i f_i * P_i, f_i = share of assignments to expert i
        # (no gradient), P_i = mean routing probability of i; minimal (1) when both are uniform.
        E = self.config.num_experts
        fraction = counts.float() / counts.sum()
        probs = (
            scores
            if self.config.moe_scoring == "softmax"
            else scores / scores.sum(-1, keepdim=True)
        )
        return self.config.moe_aux_loss_coef * E * (fraction * probs.mean(dim=0)).sum()


def moe_layers(model: nn.Module) -> list[tuple[int, MoEFeedForward]]:
    """(layer index, MoE block) for every MoE layer of a Transformer."""
    return [
        (i, layer.ffn)
        for i, layer in enumerate(model.layers)
        if isinstance(layer.ffn, MoEFeedForward)
    ]


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The summed (already coefficient-weighted) balancing loss of the last training forward."""
    losses = [block.aux_loss for _, block in moe_layers(model) if block.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None


LoadReduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a per-expert load tensor over the ranks of a data-parallel run (returns the sum)."""


@torch.no_grad()
def update_router_biases(model: nn.Module, reduce: LoadReduce | None = None) -> None:
    """Auxiliary-loss-free balancing step; call once after each optimizer.step().

    With several ranks, `reduce` sums the counts over them first, so every rank applies the same
    update and the biases stay identical; None is one process.
    """
    for _, block in moe_layers(model):
        if not block.config.moe_bias_balancing:
            continue
        load = block.load_since_update if reduce is None else reduce(block.load_since_update)
        bias = block.router.selection_bias
        bias += block.config.moe_bias_update_rate * torch.sign(load.mean() - load)
        block.load_since_update.zero_()


@dataclass
class ExpertLoad:
    layer: int
    fractions: list[float]
    """Share of routed assignments each expert received since the last read."""
    cv: float
    """Coefficient of variation (std / mean) of the per-expert load; 0 is perfectly balanced."""


def expert_load_stats(model: nn.Module, reset: bool = True) -> list[ExpertLoad]:
    """Load per MoE layer counted in training forwards since the last call (reset=True)."""
    stats = []
    for index, block in moe_layers(model):
        load = block.load_since_stats.float()
        total = load.sum().clamp(min=1)
        cv = (load.std(unbiased=False) / load.mean()).item() if load.sum() > 0 else 0.0
        stats.append(ExpertLoad(index, (load / total).tolist(), cv))
        if reset:
            block.load_since_stats.zero_()
    return stats


def expert_load_metrics(model: nn.Module, reset: bool = True) -> dict[str, float]:
    """Scalars for a metrics logger: per-layer CV and busiest-expert share, and their mean CV."""
    metrics: dict[str, float] = {}
    stats = expert_load_stats(model, reset)
    for stat in stats:
        metrics[f"moe/load_cv/layer{stat.layer}"] = stat.cv
        metrics[f"moe/max_load/layer{stat.layer}"] = max(stat.fractions)
    if stats:
        metrics["moe/load_cv"] = sum(s.cv for s in stats) / len(stats)
    return metrics
