"""The finetuning losses as pure functions of logits (fp32 math, any autocast forward).

targets hold IGNORE (-100) where there is no loss (prompt, template, padding).
Shapes: B rows, T positions, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.data.sft import IGNORE


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position (B, T); 0 where the target is IGNORE."""
    nll = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="none"
    )
    return -nll.view(targets.shape)


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the token losses, number of labelled tokens)."""
    total = -token_log_probs(logits, targets).sum()
    return total, (targets != IGNORE).sum()


def sft_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens (0 when a batch has none)."""
    total, count = masked_cross_entropy(logits, targets)
    return total / count.clamp(min=1)


def sequence_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens (B,)."""
    return token_log_probs(logits, targets).sum(dim=1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023) from summed sequence log-probs (each (B,)).

    Returns (per-pair losses -log sigmoid(beta * margin), chosen rewards, rejected rewards), where a
    reward is beta * (log pi - log pi_ref) and margin = chosen - rejected log-ratio."""
    chosen_reward = beta * (policy_chosen - reference_chosen)
    rejected_reward = beta * (policy_rejected - reference_rejected)
    losses = -F.logsigmoid(chosen_reward - rejected_reward)
    return losses, chosen_reward.detach(), rejected_reward.detach()


def preference_accuracy(margins: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 when chosen wins, 0 when rejected wins, 0.5 for a tie (the untrained policy
    equals its reference, so every margin is 0 and the accuracy is chance)."""
    return (margins > 0).float() + 0.5 * (margins == 0).float()


def token_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) per position (B, T) of the softmaxes at `temperature`."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (teacher.exp() * (teacher - student)).sum(dim=-1)


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha * T^2 * KL + (1 - alpha) * CE, KL at T, CE), each a mean over labelled tokens.

    T^2 keeps the soft term's gradient scale independent of T (Hinton et al. 2015)."""
    mask = (targets != IGNORE).float()
    count = mask.sum().clamp(min=1)
    kl = (token_kl(student_logits, teacher_logits, temperature) * mask).sum() / count
    ce = sft_loss(student_logits, targets)
    return alpha * temperature**2 * kl + (1 - alpha) * ce, kl, ce
