"""Learning-rate schedules, AdamW parameter groups and Muon's share of the parameters."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from conftest import build, tiny_model

from lmforge.config import OptimConfig
from lmforge.errors import ConfigError
from lmforge.optim.optimizers import (
    MuonAdamW,
    build_optimizer,
    check_optimizer_config,
    inner_optimizers,
    lr_at,
    set_lr,
)


def schedule(config: OptimConfig, max_steps: int) -> list[float]:
    return [lr_at(step, max_steps, config) for step in range(max_steps)]


def test_linear_warmup_reaches_peak():
    config = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = schedule(config, 100)
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in pairwise(lrs[:10]))


def test_cosine_decays_monotonically_to_min_lr_at_the_end():
    config = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="cosine")
    lrs = schedule(config, 100)
    after = lrs[10:]
    assert after[0] == pytest.approx(1e-3)
    assert all(a > b for a, b in pairwise(after))
    assert lr_at(100, 100, config) == pytest.approx(1e-4)  # min_lr after the last step
    assert 1e-4 < lrs[-1] < 1e-4 + 1e-3 * 9e-4  # the last step is within 0.1% of the range
    assert lr_at(10_000, 100, config) == pytest.approx(1e-4)  # never below the floor
    assert lr_at(55, 100, config) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway: mid-range


def test_constant_schedule():
    config = OptimConfig(lr=2e-3, min_lr=1e-4, warmup_steps=5, schedule="constant")
    lrs = schedule(config, 50)
    assert lrs[:5] == pytest.approx([4e-4, 8e-4, 1.2e-3, 1.6e-3, 2e-3])
    assert lrs[5:] == [2e-3] * 45


def test_wsd_holds_then_decays_linearly_to_min_lr():
    config = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="wsd", decay_fraction=0.2)
    lrs = schedule(config, 100)
    assert lrs[10:80] == [1e-3] * 70  # stable until the last 20% of steps
    decay = lrs[80:]
    assert all(a > b for a, b in pairwise(decay))
    assert decay[-1] == pytest.approx(1e-4)
    steps = [decay[i] - decay[i + 1] for i in range(len(decay) - 1)]
    assert max(steps) == pytest.approx(min(steps))  # linear


@pytest.mark.parametrize("max_steps", [2, 5, 9, 10])
def test_wsd_short_runs_still_decay_to_min_lr(max_steps):
    config = OptimConfig(lr=1e-2, min_lr=1e-3, warmup_steps=1, schedule="wsd")
    lrs = schedule(config, max_steps)
    assert lrs[-1] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-2)


@pytest.mark.parametrize("max_steps", [2, 5, 9])
def test_cosine_short_runs_decay(max_steps):
    config = OptimConfig(lr=1e-2, min_lr=1e-3, warmup_steps=1, schedule="cosine")
    lrs = schedule(config, max_steps)
    assert lrs[0] == pytest.approx(1e-2)
    assert all(a >= b - 1e-12 for a, b in pairwise(lrs))
    assert lr_at(max_steps, max_steps, config) == pytest.approx(1e-3)


def test_weight_decay_only_on_matrices():
    model = build(tiny_model("tiny-gpt2", vocab_size=97))  # has biases and LayerNorm weights
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.1), torch.device("cpu"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert decayed["params"] and all(p.dim() >= 2 for p in decayed["params"])
    assert plain["params"] and all(p.dim() < 2 for p in plain["params"])
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once
    assert any(p is model.token_embedding.weight for p in decayed["params"])
    assert any(p is model.final_norm.weight for p in plain["params"])


def test_adamw_step_decays_matrices_and_leaves_vectors():
    """With zero gradients Adam's update is zero, so only decoupled weight decay moves weights."""
    model = build(tiny_model("tiny-gpt2", vocab_size=97))
    lr, wd = 0.1, 0.5
    optimizer = build_optimizer(model, OptimConfig(lr=lr, weight_decay=wd), torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1 - lr * wd if p.dim() >= 2 else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, msg=name)


def test_muon_takes_the_layers_matrices_and_adamw_the_rest():
    model = build(tiny_model("tiny-gpt2", vocab_size=97))  # has biases and LayerNorm weights
    config = OptimConfig(name="muon", lr=1e-3, muon_lr=0.02, embedding_lr=0.1, weight_decay=0.1)
    optimizer = build_optimizer(model, config, torch.device("cpu"))
    assert isinstance(optimizer, MuonAdamW)
    muon, adamw = inner_optimizers(optimizer)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert muon_names == {
        n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("layers.")
    }
    assert any(n.endswith("attn.qkv.weight") for n in muon_names)
    assert any(n.endswith("ffn.down.weight") for n in muon_names)
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once
    adamw_names = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert {"token_embedding.weight", "final_norm.weight"} <= adamw_names
    assert all(model.get_parameter(n).dim() < 2 for n in adamw_names if n.startswith("layers."))

    set_lr(optimizer, 5e-4)  # half of the peak lr: every group at half of its own peak
    lrs = {names[id(g["params"][0])]: g["lr"] for g in optimizer.param_groups}
    assert [g["lr"] for g in muon.param_groups] == pytest.approx([0.01])
    assert lrs["token_embedding.weight"] == pytest.approx(0.05)
    decayed = [g for g in adamw.param_groups if g["weight_decay"] and "lr_ratio" not in g]
    assert [g["lr"] for g in decayed] == pytest.approx([5e-4])


def test_muon_step_orthogonalises_the_update():
    """With one step from zero momentum, Muon's update to a square matrix is lr x an
    approximately orthogonal matrix (Newton-Schulz leaves singular values near, not at, 1)."""
    model = build(tiny_model("tiny-llama", vocab_size=97))
    optimizer = build_optimizer(
        model, OptimConfig(name="muon", muon_lr=0.1, weight_decay=0.0), torch.device("cpu")
    )
    weight = model.layers[0].attn.out.weight
    before = weight.detach().clone()
    # A fixed draw: a square Gaussian matrix's smallest singular value is sometimes tiny, and
    # Newton-Schulz's 5 iterations lift only those above ~0.1 near 1.
    generator = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer.step()
    singular = torch.linalg.svdvals((before - weight.detach()) / 0.1)
    assert singular.min() > 0.3 and singular.max() < 1.5


@pytest.mark.parametrize("strategy", ["zero1", "fsdp"])
def test_muon_refuses_sharded_strategies(strategy):
    with pytest.raises(ConfigError, match=f"does not support parallel.strategy='{strategy}'"):
        check_optimizer_config(OptimConfig(name="muon"), strategy)
    check_optimizer_config(OptimConfig(name="muon"), "ddp")
    check_optimizer_config(OptimConfig(name="adamw"), strategy)
