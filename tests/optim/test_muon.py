"""lmforge's Muon (Newton-Schulz in a chosen dtype) against torch.optim.Muon (always bf16)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim._muon import _zeropower_via_newtonschulz

from lmforge.optim.muon import Muon, orthogonalize

COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@pytest.mark.parametrize("shape", [(64, 32), (32, 96), (48, 48)])
def test_bf16_orthogonalisation_is_torchs_exactly(shape):
    grad = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ours = orthogonalize(grad, COEFFICIENTS, 5, 1e-7, torch.bfloat16)
    assert torch.equal(ours, _zeropower_via_newtonschulz(grad, COEFFICIENTS, 5, 1e-7))


@pytest.mark.parametrize("shape", [(64, 32), (32, 96), (48, 48)])
def test_fp32_orthogonalisation_matches_torchs_within_bf16_tolerance(shape):
    grad = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    ours = orthogonalize(grad, COEFFICIENTS, 5, 1e-7, torch.float32)
    theirs = _zeropower_via_newtonschulz(grad, COEFFICIENTS, 5, 1e-7).float()
    assert ours.dtype == torch.float32
    assert (ours - theirs).norm() / theirs.norm() < 0.02  # bf16 carries 8 bits of mantissa
    cosine = torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0)
    assert cosine > 0.999
    # Orthogonal-ish either way: singular values in Muon's (0.5, 1.5) band, not collapsed.
    singular = torch.linalg.svdvals(ours)
    assert singular.min() > 0.3 and singular.max() < 1.5


def _train_two_steps(optimizer_class, **options) -> list[torch.Tensor]:
    """How far two steps move each weight."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Linear(32, 8, bias=False))
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = optimizer_class(model.parameters(), lr=0.05, weight_decay=0.1, **options)
    inputs = torch.randn(64, 16)
    for _ in range(2):
        model(inputs).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach() - s for p, s in zip(model.parameters(), start, strict=True)]


@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
def test_steps_equal_torchs_muon_in_bf16_and_track_it_in_fp32(adjust_lr_fn):
    theirs = _train_two_steps(torch.optim.Muon, adjust_lr_fn=adjust_lr_fn)
    same = _train_two_steps(Muon, adjust_lr_fn=adjust_lr_fn, ns_dtype=torch.bfloat16)
    fp32 = _train_two_steps(Muon, adjust_lr_fn=adjust_lr_fn, ns_dtype=torch.float32)
    for mine, reference, wide in zip(same, theirs, fp32, strict=True):
        assert torch.equal(mine, reference)
        # Low-rank gradients make Newton-Schulz sensitive to rounding: the directions agree.
        cosine = torch.nn.functional.cosine_similarity(wide.flatten(), reference.flatten(), dim=0)
        assert cosine > 0.97, cosine


def test_state_layout_is_torchs():
    model = nn.Linear(8, 8, bias=False)
    optimizer = Muon(model.parameters(), lr=0.01, ns_dtype=torch.float32)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    assert isinstance(optimizer, torch.optim.Muon)
    assert set(optimizer.state[model.weight]) == {"momentum_buffer"}
