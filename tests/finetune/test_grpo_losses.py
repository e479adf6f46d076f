"""The GRPO loss math against values worked out by hand, and its gradients against the plain
policy gradient they should reduce to."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.data.sft import IGNORE
from lmforge.finetune.grpo_losses import group_advantages, grpo_loss, token_log_probs

LOG = math.log


def test_group_advantages_by_hand():
    # Three groups of 3: {1, 0, 0}, all equal {0.9}, {2, 4, 6}.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.9, 0.9, 0.9, 2.0, 4.0, 6.0])
    third = 1 / 3
    centred = [2 * third, -third, -third, 0, 0, 0, -2.0, 0.0, 2.0]
    torch.testing.assert_close(group_advantages(rewards, 3), torch.tensor(centred))
    # Population std: sqrt(2/9) for the first group, sqrt(8/3) for the last.
    r2, r15 = math.sqrt(2), math.sqrt(1.5)
    scaled = [r2, -1 / r2, -1 / r2, 0, 0, 0, -r15, 0.0, r15]
    got = group_advantages(rewards, 3, scale_by_std=True, eps=0.0)
    torch.testing.assert_close(got, torch.tensor(scaled))
    default_eps = group_advantages(rewards, 3, scale_by_std=True)
    torch.testing.assert_close(default_eps, torch.tensor(scaled), rtol=0, atol=1e-3)


def test_uniform_group_is_exactly_zero():
    # The float32 mean of three 0.9s is not 0.9; without the explicit zero the std scaling would
    # turn that ulp into an advantage of order 1e-3.
    rewards = torch.full((3,), 0.9)
    assert (rewards - rewards.mean()).abs().max() > 0
    for scale in (False, True):
        assert torch.equal(group_advantages(rewards, 3, scale_by_std=scale), torch.zeros(3))
    assert torch.equal(group_advantages(torch.tensor([3.0, -1.0]), 1), torch.zeros(2))


def test_group_advantages_reject_bad_shapes():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(2, 2), 2)


def test_token_log_probs_by_hand_and_stable():
    probs = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]])
    got = token_log_probs(torch.log(probs), torch.tensor([[1, IGNORE]]))
    torch.testing.assert_close(got, torch.tensor([[LOG(0.25), 0.0]]))
    # Logits far beyond exp's range (2^13, exact in bf16), in bf16: fp32 math, no overflow.
    big = 8192.0
    logits = torch.tensor([[[big, 0.0, -big], [big, 0.0, -big]]], dtype=torch.bfloat16)
    got = token_log_probs(logits, torch.tensor([[0, 1]]))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([[0.0, -big]]))


def _batch():
    """2x3: ratios 1.5, 0.5, 1.0 in both rows, A = +1 then -1, old log-probs -1."""
    old = torch.full((2, 3), -1.0)
    new = old + torch.log(torch.tensor([1.5, 0.5, 1.0])).expand(2, 3)
    return new, old, torch.tensor([1.0, -1.0])


# Per-token losses -min(r A, clip(r, 0.8, 1.2) A), by hand:
#   A = +1: r 1.5 -> -min(1.5, 1.2) = -1.2 (clipped), r 0.5 -> -0.5, r 1.0 -> -1.0
#   A = -1: r 1.5 -> -min(-1.5, -1.2) = 1.5, r 0.5 -> -min(-0.5, -0.8) = 0.8 (clipped), 1.0 -> 1.0
# Mean of the six: (-2.7 + 3.3) / 6 = 0.1.
def test_clipped_surrogate_by_hand():
    new, old, advantages = _batch()
    full = torch.ones(2, 3, dtype=torch.bool)
    for normalization in ("token", "sequence"):
        loss, stats = grpo_loss(new, old, None, advantages, full, 0.2, 0.0, normalization)
        assert abs(loss.item() - 0.1) < 1e-6
    assert abs(stats["policy_loss"].item() - 0.1) < 1e-6
    assert abs(stats["clip_fraction"].item() - 2 / 6) < 1e-6
    assert abs(stats["clip_high_fraction"].item() - 1 / 6) < 1e-6
    assert abs(stats["clip_low_fraction"].item() - 1 / 6) < 1e-6
    assert abs(stats["ratio_mean"].item() - 1.0) < 1e-6
    assert abs(stats["ratio_max"].item() - 1.5) < 1e-6
    assert stats["completion_tokens"].item() == 6
    assert "kl" not in stats
    # Clip-higher (0.2, 0.28): only the A = +1, r = 1.5 token changes, -1.2 -> -1.28.
    loss, _ = grpo_loss(new, old, None, advantages, full, clip_eps=(0.2, 0.28))
    assert abs(loss.item() - (0.6 - 0.08) / 6) < 1e-6


def test_k3_kl_by_hand():
    new, old, advantages = _batch()
    full = torch.ones(2, 3, dtype=torch.bool)
    # ref - new = log 2, -log 2, 0 in row 0 and 0 in row 1:
    # k3 = (2 - log 2 - 1) + (1/2 + log 2 - 1) + 0 = 0.5 over 6 tokens.
    delta = torch.tensor([[LOG(2), -LOG(2), 0.0], [0.0, 0.0, 0.0]])
    loss, stats = grpo_loss(new, old, new + delta, advantages, full, 0.2, beta=0.1)
    assert abs(stats["kl"].item() - 0.5 / 6) < 1e-6
    assert abs(loss.item() - (0.1 + 0.1 * 0.5 / 6)) < 1e-6
    assert abs(stats["policy_loss"].item() - 0.1) < 1e-6
    _, same = grpo_loss(new, old, new.clone(), advantages, full, beta=0.1)
    assert same["kl"].item() == 0.0
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(new, old, None, advantages, full, beta=0.1)


def test_token_and_sequence_normalization_differ_on_unequal_lengths():
    new, old, advantages = _batch()
    mask = torch.tensor([[True, True, True], [True, False, False]])
    token, _ = grpo_loss(new, old, None, advantages, mask, normalization="token")
    sequence, _ = grpo_loss(new, old, None, advantages, mask, normalization="sequence")
    assert abs(token.item() - (-2.7 + 1.5) / 4) < 1e-6  # every token weighs 1/4
    assert abs(sequence.item() - (-0.9 + 1.5) / 2) < 1e-6  # every row weighs 1/2
    with pytest.raises(ValueError, match="normalization"):
        grpo_loss(new, old, None, advantages, mask, normalization="batch")
