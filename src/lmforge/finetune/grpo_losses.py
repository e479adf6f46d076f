"""The GRPO loss math (Shao et al. 2024, DeepSeekMath) as pure functions of log-probs.

Where these fit: the GRPO objective samples G completions per prompt with the policy in eval
mode, scores them, and turns the rewards into `group_advantages`. It keeps the sampling policy's
`token_log_probs` as old_logp for mu optimizer steps on those samples (with mu=1, old is new
detached: the ratio is 1 and the gradient is REINFORCE's with the group mean as baseline). The reference log-probs come from the
model with its LoRA adapters switched off (`adapters_disabled`, as DPO does) or a frozen copy.

Shapes: B completions (rows), T positions, V vocabulary. `mask` (B, T) is True on completion
tokens only: prompt, template and padding are False and never reach the loss or its statistics.
"""

from __future__ import annotations

from typing import Literal

import torch

# Reused, not redefined: log p(target) per position via cross-entropy on fp32 logits, which is a
# log-softmax underneath (stable for large logits); 0 where the target is IGNORE (-100).
from lmforge.finetune.losses import token_log_probs

__all__ = ["group_advantages", "grpo_loss", "token_log_probs"]

Normalization = Literal["token", "sequence"]


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = False, eps: float = 1e-4
) -> torch.Tensor:
    """Each reward minus the mean of its group (consecutive blocks of `group_size`), (N,).

    scale_by_std (off by default) also divides by the group's std, as DeepSeekMath does. It is off
    because Dr. GRPO (Liu et al. 2025) shows it weights near-uniform groups (almost all right or
    all wrong, i.e. too easy or too hard prompts) up to 1/std, so a group with one lucky sample
    dominates the batch. The std is the population std (divide by G, not G-1): the scaled
    advantages then have unit mean square in every non-uniform group whatever G is, and G=1 is
    defined. (TRL uses the sample std, larger by sqrt(G/(G-1)).) `eps` keeps the division finite.

    A group whose rewards are all equal gets exactly 0: the float mean of G equal values can miss
    them by an ulp, and dividing that by a ~0 std would turn rounding into a signal.
    """
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be (N,) with N a multiple of group_size; got shape "
            f"{tuple(rewards.shape)} and group_size {group_size}"
        )
    groups = rewards.float().view(-1, group_size)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std:
        advantages = advantages / (groups.std(dim=1, correction=0, keepdim=True) + eps)
    uniform = (groups == groups[:, :1]).all(dim=1, keepdim=True)
    return torch.where(uniform, torch.zeros_like(advantages), advantages).view(-1)


def _clip_band(clip_eps: float | tuple[float, float]) -> tuple[float, float]:
    low, high = (clip_eps, clip_eps) if isinstance(clip_eps, int | float) else clip_eps
    if not 0 <= low < 1 or high < 0:
        raise ValueError(f"clip_eps needs 0 <= low < 1 and high >= 0; got {clip_eps}")
    return 1 - low, 1 + high


def _normalize(per_token: torch.Tensor, mask: torch.Tensor, normalization: str) -> torch.Tensor:
    """Masked mean of (B, T) values; empty rows and empty batches give 0, never NaN."""
    weights = mask.float()
    if normalization == "token":
        return (per_token * weights).sum() / weights.sum().clamp(min=1)
    if normalization == "sequence":
        lengths = weights.sum(dim=1)
        row_means = (per_token * weights).sum(dim=1) / lengths.clamp(min=1)
        # A row without completion tokens has no mean: it is left out, not counted as 0.
        has_tokens = (lengths > 0).float()
        return (row_means * has_tokens).sum() / has_tokens.sum().clamp(min=1)
    raise ValueError(f"normalization must be 'token' or 'sequence'; got {normalization!r}")


def grpo_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | tuple[float, float] = 0.2,
    beta: float = 0.0,
    normalization: Normalization = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(scalar loss, detached statistics) of the clipped GRPO objective with a k3 KL penalty.

    Per completion token: ratio = exp(new - old); the PPO surrogate min(ratio * A,
    clip(ratio, 1 - low, 1 + high) * A); loss = -surrogate + beta * k3, where k3 = exp(ref - new)
    - (ref - new) - 1 is Schulman's unbiased, never negative estimator of KL(new || ref).

    clip_eps: one epsilon (symmetric) or (low, high); a larger high is DAPO's "clip-higher"
    (0.2, 0.28), which lets unlikely tokens that paid off grow faster. beta defaults to 0 (DAPO,
    Dr. GRPO drop the KL term; then ref_logp may be None and no reference pass is needed);
    DeepSeekMath used 0.04.

    normalization "token" (default): the sum over all completion tokens of the batch over their
    count (DAPO's token-level mean), so every token weighs the same and a long completion is not
    diluted. "sequence": mean over each row's tokens, then over rows (the original GRPO), which
    gives long wrong answers a smaller per-token penalty than short ones (the length bias Dr. GRPO
    points out). Both are per call: with gradient accumulation the caller reweights micro-batches.

    old_logp and ref_logp are constants (detached here). Positions outside `mask` are replaced
    before any arithmetic, so whatever they hold (even inf or NaN) changes neither loss nor grads.
    """
    low, high = _clip_band(clip_eps)
    if beta and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference model's token log-probs)")
    if advantages.shape != new_logp.shape[:1]:
        # (1,) or (B, 1) would broadcast silently over every row.
        raise ValueError(f"advantages must be (B,) = {tuple(new_logp.shape[:1])}")
    mask = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=new_logp.device)
    new = torch.where(mask, new_logp.float(), zero)
    old = torch.where(mask, old_logp.detach().float(), zero)
    advantage = advantages.detach().float().view(-1, 1)

    ratio = torch.exp(new - old)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, low, high) * advantage
    per_token = -torch.minimum(unclipped, clipped)
    stats = {"policy_loss": _normalize(per_token, mask, normalization)}
    if ref_logp is not None:
        log_ref_ratio = torch.where(mask, ref_logp.detach().float(), zero) - new
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
        per_token = per_token + beta * kl
        stats["kl"] = _normalize(kl, mask, "token")
    loss = _normalize(per_token, mask, normalization)

    # The clipped term is the active one when the ratio left the band on the side the advantage
    # pushes it (above for A > 0, below for A < 0): there the token gets no gradient.
    weights = mask.float()
    count = weights.sum().clamp(min=1)
    high_clip = (ratio > high) & (advantage > 0)
    low_clip = (ratio < low) & (advantage < 0)
    stats.update(
        clip_fraction=((high_clip | low_clip).float() * weights).sum() / count,
        clip_high_fraction=(high_clip.float() * weights).sum() / count,
        clip_low_fraction=(low_clip.float() * weights).sum() / count,
        ratio_mean=(ratio * weights).sum() / count,
        ratio_max=torch.where(mask, ratio, zero).max(),  # 0 for an empty batch
        completion_tokens=weights.sum(),
    )
    return loss, {name: value.detach() for name, value in stats.items()}
