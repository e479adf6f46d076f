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
    with pytest.raises(ValueError, match="advantages must be"):
        grpo_loss(new, old, None, advantages[:1], mask)
    with pytest.raises(ValueError, match="normalization"):
        grpo_loss(new, old, None, advantages, mask, normalization="batch")


def test_masked_positions_change_nothing():
    new, old, advantages = _batch()
    ref = new + 0.3
    mask = torch.tensor([[True, True, False], [True, False, False]])
    garbage = torch.tensor([[0.0, 0.0, math.inf], [0.0, math.nan, -math.inf]])
    results = []
    for noise in (torch.zeros(2, 3), garbage):
        leaf = (new + noise).requires_grad_()
        loss, stats = grpo_loss(leaf, old + noise, ref - noise, advantages, mask, beta=0.1)
        loss.backward()
        results.append((loss, stats, leaf.grad))
    (loss_a, stats_a, grad_a), (loss_b, stats_b, grad_b) = results
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)
    assert all(torch.equal(stats_a[k], stats_b[k]) for k in stats_a)
    assert torch.equal(grad_a[~mask], torch.zeros(3))
    # Through logits too: a masked position's logits and target move no gradient.
    logits = torch.randn(2, 3, 5, generator=torch.manual_seed(0))
    targets = torch.tensor([[1, 2, 3], [4, 0, IGNORE]])
    grads = []
    for shift in (0.0, 50.0):
        leaf = logits.clone()
        leaf[~mask] += shift
        leaf.requires_grad_()
        logp = token_log_probs(leaf, targets)
        grpo_loss(logp, logp.detach() - 0.1, None, advantages, mask)[0].backward()
        grads.append(leaf.grad[mask])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-7)


def _policy(rows: int, steps: int, vocab: int = 5) -> tuple[torch.nn.Embedding, torch.Tensor]:
    """A tiny "policy": an embedding from the previous token to next-token logits."""
    policy = torch.nn.Embedding(vocab, vocab)
    torch.nn.init.normal_(policy.weight, generator=torch.manual_seed(1))
    tokens = torch.randint(0, vocab, (rows, steps + 1), generator=torch.manual_seed(2))
    return policy, tokens


def test_uniform_group_gives_exactly_zero_gradient():
    policy, tokens = _policy(rows=6, steps=4)
    rewards = torch.tensor([0.9, 0.9, 0.9, 1.0, 0.0, 0.0])  # the first group is all equal
    advantages = group_advantages(rewards, 3, scale_by_std=True)
    mask = torch.ones(6, 4, dtype=torch.bool)
    logp = token_log_probs(policy(tokens[:, :-1]), tokens[:, 1:])
    old = logp.detach() + 0.3  # mu > 1: the ratio is off 1 and the clipping in play
    first, second = torch.autograd.grad(
        grpo_loss(logp, old, None, advantages, mask, beta=0.0)[0], logp
    )[0].split(3)
    assert torch.equal(first, torch.zeros(3, 4))
    assert second.abs().sum() > 0
    rows = torch.zeros(6, 1, dtype=torch.bool)
    rows[:3] = True
    only_uniform = grpo_loss(logp, old, None, advantages, mask & rows)[0]
    only_uniform.backward()
    assert torch.equal(policy.weight.grad, torch.zeros(5, 5))


def test_on_policy_gradient_is_reinforce_with_group_baseline():
    """mu = 1, beta = 0: the gradient is -(1/N) sum A_i grad log pi(token) (token-level), and
    -(1/B) sum_i A_i / |o_i| sum_t grad log pi(token) (sequence-level)."""
    policy, tokens = _policy(rows=4, steps=4)
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.5, 2.0]), 2)
    mask = torch.arange(4) < torch.tensor([[4], [2], [3], [1]])  # lengths 4, 2, 3, 1

    def gradient(loss_of) -> torch.Tensor:
        logp = token_log_probs(policy(tokens[:, :-1]), tokens[:, 1:])
        return torch.autograd.grad(loss_of(logp), policy.weight)[0]

    lengths = mask.sum(dim=1)
    reinforce_token = gradient(lambda logp: -(advantages[:, None] * logp * mask).sum() / mask.sum())
    reinforce_sequence = gradient(
        lambda logp: -((advantages[:, None] * logp * mask).sum(dim=1) / lengths).mean()
    )
    for normalization, expected in (("token", reinforce_token), ("sequence", reinforce_sequence)):
        got = gradient(
            lambda logp, n=normalization: grpo_loss(
                logp, logp.detach(), None, advantages, mask, normalization=n
            )[0]
        )
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(reinforce_token, reinforce_sequence)


def test_kl_gradient_pulls_toward_the_reference():
    # One token, A = 0, beta = 0.5: d(beta k3)/d new = beta (1 - exp(ref - new)).
    mask = torch.ones(1, 1, dtype=torch.bool)
    zero_a = torch.zeros(1)
    for offset, expected in ((LOG(2), -0.5), (-LOG(2), 0.25), (0.0, 0.0)):
        new = torch.full((1, 1), -1.0, requires_grad=True)
        loss, stats = grpo_loss(new, new.detach(), new.detach() + offset, zero_a, mask, beta=0.5)
        loss.backward()
        assert abs(new.grad.item() - expected) < 1e-6  # descent moves new toward ref
        assert (stats["kl"].item() > 0) == (offset != 0)
    # A few SGD steps on a policy: the sampled tokens' log-probs close in on the reference's.
    policy, tokens = _policy(rows=2, steps=3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        ref = token_log_probs(policy(tokens[:, :-1]), tokens[:, 1:])
        policy.weight.add_(torch.randn(5, 5, generator=torch.manual_seed(3)))
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    kls = []
    for _ in range(5):
        logp = token_log_probs(policy(tokens[:, :-1]), tokens[:, 1:])
        loss, stats = grpo_loss(logp, logp.detach(), ref, torch.zeros(2), mask, beta=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        kls.append(stats["kl"].item())
    assert kls[0] > 0 and kls[-1] < kls[0] / 2


def test_empty_rows_give_no_nan():
    new, old, advantages = _batch()
    one_row = torch.tensor([[True, True, True], [False, False, False]])
    for normalization, expected in (("token", -0.9), ("sequence", -0.9)):
        leaf = new.clone().requires_grad_()
        loss, stats = grpo_loss(
            leaf, old, new, advantages, one_row, beta=0.1, normalization=normalization
        )
        loss.backward()
        assert abs(loss.item() - expected) < 1e-6  # the empty row does not dilute the mean
        assert torch.isfinite(leaf.grad).all() and torch.equal(leaf.grad[1], torch.zeros(3))
    for normalization in ("token", "sequence"):
        leaf = new.clone().requires_grad_()
        none = torch.zeros(2, 3, dtype=torch.bool)
        loss, stats = grpo_loss(
            leaf, old, new, advantages, none, beta=0.1, normalization=normalization
        )
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(leaf.grad, torch.zeros(2, 3))
        assert all(torch.isfinite(value).all() for value in stats.values())
