"""The DPO and distillation losses against values computed by hand on small cases."""

from __future__ import annotations

import math

import torch

from lmforge.data.sft import IGNORE
from lmforge.finetune.losses import (
    distill_loss,
    dpo_loss,
    preference_accuracy,
    sequence_log_probs,
    sft_loss,
)


def test_sequence_log_probs_sum_labelled_tokens_only():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]]))
    targets = torch.tensor([[0, IGNORE, 2]])
    expected = math.log(0.5) + math.log(0.6)
    assert abs(sequence_log_probs(logits, targets).item() - expected) < 1e-6
    assert abs(sft_loss(logits, targets).item() + expected / 2) < 1e-6


def test_dpo_loss_by_hand():
    # Pair 1: policy gains 1.0 on chosen and loses 0.5 on rejected against the reference.
    # Pair 2: the policy prefers the rejected reply.
    policy_chosen = torch.tensor([-10.0, -8.0])
    policy_rejected = torch.tensor([-12.5, -6.0])
    reference_chosen = torch.tensor([-11.0, -8.0])
    reference_rejected = torch.tensor([-12.0, -7.0])
    beta = 0.1
    losses, chosen, rejected = dpo_loss(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta
    )
    # margin_1 = 0.1 * ((-10 + 11) - (-12.5 + 12)) = 0.15; margin_2 = 0.1 * (0 - 1) = -0.1
    expected = [math.log(1 + math.exp(-0.15)), math.log(1 + math.exp(0.1))]
    torch.testing.assert_close(losses, torch.tensor(expected), rtol=0, atol=1e-6)
    torch.testing.assert_close(chosen, torch.tensor([0.1, 0.0]))
    torch.testing.assert_close(rejected, torch.tensor([-0.05, 0.1]))
    accuracy = preference_accuracy(chosen - rejected)
    assert accuracy.tolist() == [1.0, 0.0]
    assert preference_accuracy(torch.zeros(3)).tolist() == [0.5, 0.5, 0.5]
    assert abs(losses.mean().item() - sum(expected) / 2) < 1e-6


def test_distill_loss_by_hand():
    # One labelled position with a 2-token vocabulary, one ignored position.
    teacher = torch.tensor([[[math.log(0.8), math.log(0.2)], [5.0, -5.0]]])
    student = torch.tensor([[[math.log(0.5), math.log(0.5)], [-5.0, 5.0]]])
    targets = torch.tensor([[0, IGNORE]])
    temperature, alpha = 2.0, 0.25
    # Softmax at T = 2 of log-probs is proportional to sqrt(p).
    t = torch.tensor([math.sqrt(0.8), math.sqrt(0.2)])
    t = t / t.sum()
    s = torch.tensor([0.5, 0.5])
    kl = float((t * (t / s).log()).sum())
    ce = -math.log(0.5)
    loss, kl_value, ce_value = distill_loss(student, teacher, targets, temperature, alpha)
    assert abs(kl_value.item() - kl) < 1e-6
    assert abs(ce_value.item() - ce) < 1e-6
    assert abs(loss.item() - (alpha * temperature**2 * kl + (1 - alpha) * ce)) < 1e-6
    same, kl_same, _ = distill_loss(teacher, teacher, targets, temperature, 1.0)
    assert abs(kl_same.item()) < 1e-7 and abs(same.item()) < 1e-6
