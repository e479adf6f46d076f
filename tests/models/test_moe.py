"""Mixture-of-Experts: dispatch against a per-token reference, routing options, the Switch
balancing loss, auxiliary-loss-free bias updates, load statistics, counting and bad configs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build, tiny_model

from lmforge.errors import ConfigError
from lmforge.models.counting import active_parameters, build_on_meta, count_parameters
from lmforge.models.moe import (
    MoEFeedForward,
    expert_load_metrics,
    expert_load_stats,
    moe_aux_loss,
    moe_layers,
    update_router_biases,
)
from lmforge.models.presets import model_preset

V = 97
MOE = dict(ffn="moe", num_experts=6, experts_per_token=2, moe_ffn_dim=24)


def moe_block(**fields) -> MoEFeedForward:
    torch.manual_seed(0)
    model = build(tiny_model(vocab_size=V, **(MOE | fields)))
    return model.layers[0].ffn


@pytest.mark.parametrize(
    "fields",
    [
        {},
        dict(moe_scoring="sigmoid", moe_bias_balancing=True, moe_routed_scale=2.5),
        dict(moe_norm_topk=False, num_shared_experts=2, moe_groups=3, moe_topk_groups=2),
    ],
)
@torch.no_grad()
def test_dispatch_equals_a_per_token_reference(fields):
    block = moe_block(**fields)
    if fields.get("moe_bias_balancing"):
        block.router.selection_bias.copy_(torch.linspace(-0.3, 0.3, 6))
    x = torch.randn(2, 9, 64)
    weights, indices, _ = block.router(x.reshape(-1, 64))
    expected = torch.zeros(18, 64)
    for n, token in enumerate(x.reshape(-1, 64)):  # the slow obvious way, token by token
        for w, e in zip(weights[n], indices[n], strict=True):
            gate, up = (block.experts.up[e] @ token).chunk(2)
            expected[n] += w * (block.experts.down[e] @ (F.silu(gate) * up))
    if block.shared is not None:
        expected += block.shared(x).reshape(-1, 64)
    torch.testing.assert_close(block(x).reshape(-1, 64), expected, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_router_options():
    block = moe_block(moe_norm_topk=True, moe_routed_scale=3.0)
    weights, _, _ = block.router(torch.randn(10, 64))
    torch.testing.assert_close(weights.sum(-1), torch.full((10,), 3.0))
    grouped = moe_block(moe_groups=3, moe_topk_groups=1)  # 3 groups of 2: both picks in one group
    _, indices, _ = grouped.router(torch.randn(50, 64))
    assert (indices // 2)[:, 0].eq((indices // 2)[:, 1]).all()
    biased = moe_block(moe_bias_balancing=True)
    biased.router.selection_bias.copy_(torch.tensor([0, 0, 0, 0, 10.0, 10.0]))
    w, indices, scores = biased.router(torch.randn(20, 64))
    assert set(indices.flatten().tolist()) == {4, 5}  # the bias decides selection ...
    chosen = scores.gather(1, indices)
    torch.testing.assert_close(w, chosen / chosen.sum(-1, keepdim=True))  # ... not the weights


def test_switch_balancing_loss_is_summed_over_layers_and_differentiable():
    model = build(tiny_model(vocab_size=V, **MOE, moe_aux_loss_coef=0.01, num_layers=3))
    model.train()
    tokens = torch.randint(0, V, (4, 16))
    model(tokens)
    loss = moe_aux_loss(model)
    per_layer = [layer.ffn.aux_loss for layer in model.layers]
    assert loss is not None and torch.allclose(loss, sum(per_layer))
    assert 0.01 * 0.99 < per_layer[0].item() < 0.01 * 6  # E * sum f P is 1 when uniform, <= E
    loss.backward()
    assert model.layers[0].ffn.router.weight.grad.abs().sum() > 0
    model.eval()
    model(tokens)
    assert moe_aux_loss(model) is None  # only training forwards produce it


def _skewed_router_cv(update: bool, steps: int = 300) -> tuple[float, float]:
    """CV of expert load on fixed data with a router skewed towards experts 0 and 1."""
    torch.manual_seed(0)
    block = moe_block(num_experts=8, moe_scoring="sigmoid", moe_bias_balancing=True)
    block.config.moe_bias_update_rate = 0.01
    with torch.no_grad():
        block.router.weight[:2] += 0.1  # with inputs of mean 0.5, two experts look good to everyone
    block.train()
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Module()])
    model.layers[0].ffn = block
    x = torch.randn(256, 1, 64) + 0.5
    with torch.no_grad():
        block(x)
        first = expert_load_stats(model)[0].cv
        for _ in range(steps):
            block(x)
            if update:
                update_router_biases(model)
        expert_load_stats(model)
        block(x)
    return first, expert_load_stats(model)[0].cv


def test_aux_loss_free_bias_updates_balance_a_skewed_router():
    start, balanced = _skewed_router_cv(update=True)
    _, untouched = _skewed_router_cv(update=False)
    assert start > 1.0  # deliberately skewed
    assert untouched == pytest.approx(start)
    assert balanced < 0.3 * start, (start, balanced)


def test_router_bias_update_follows_the_loads_that_reduce_returns():
    """Under several ranks every rank must apply the update of the loads summed over ranks:
    `reduce` gets each layer's local load and its result alone decides the update."""
    torch.manual_seed(0)
    config = tiny_model(vocab_size=V, **MOE, moe_scoring="sigmoid", moe_bias_balancing=True)
    model = build(config).train()
    model(torch.randint(0, V, (2, 16)))
    blocks = [block for _, block in moe_layers(model)]
    local = [block.load_since_update.clone() for block in blocks]
    before = [block.router.selection_bias.clone() for block in blocks]
    other_rank = torch.arange(6.0) * 100  # a second rank whose loads outweigh this one's
    seen = []

    def reduce(load: torch.Tensor) -> torch.Tensor:
        seen.append(load.clone())
        return load + other_rank

    update_router_biases(model, reduce)
    assert len(seen) == len(blocks) == 2
    for block, load, bias, got in zip(blocks, local, before, seen, strict=True):
        assert torch.equal(got, load)
        total = load + other_rank
        step = config.moe_bias_update_rate * torch.sign(total.mean() - total)
        assert torch.equal(block.router.selection_bias, bias + step)
        assert not block.load_since_update.any()  # counting starts again


def test_expert_load_stats_and_metrics():
    model = build(tiny_model(vocab_size=V, **MOE, moe_first_dense_layers=1, num_layers=3)).train()
    model(torch.randint(0, V, (2, 16)))
    stats = expert_load_stats(model, reset=False)
    assert [s.layer for s in stats] == [1, 2]
    assert sum(stats[0].fractions) == pytest.approx(1.0)
    metrics = expert_load_metrics(model)
    assert set(metrics) == {
        "moe/load_cv/layer1",
        "moe/load_cv/layer2",
        "moe/max_load/layer1",
        "moe/max_load/layer2",
        "moe/load_cv",
    }
    assert expert_load_stats(model)[0].fractions == [0.0] * 6  # reset by the read above


def test_moe_counts_total_and_active_parameters():
    model = build_on_meta(tiny_model(vocab_size=V, **MOE))
    per_expert = 3 * 64 * 24
    idle = 2 * (6 - 2) * per_expert  # two layers, four idle experts each
    assert count_parameters(model) - active_parameters(model) == idle
    mixtral = build_on_meta(model_preset("mixtral-8x7b"))
    assert round(count_parameters(mixtral) / 1e9, 1) == 46.7
    assert round(active_parameters(mixtral) / 1e9, 1) == 12.9
    assert round(count_parameters(build_on_meta(model_preset("deepseek-v2-lite"))) / 1e9, 1) == 15.7


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(experts_per_token=7), "experts_per_token=7 exceeds num_experts=6"),
        (dict(moe_groups=4), "moe_groups=4 must divide num_experts=6"),
        (dict(moe_groups=3, moe_topk_groups=1, experts_per_token=3), "raise moe_topk_groups"),
    ],
)
def test_bad_moe_configs_raise_config_error(fields, message):
    with pytest.raises(ConfigError, match=message):
        tiny_model(vocab_size=V, **(MOE | fields)).validate()
