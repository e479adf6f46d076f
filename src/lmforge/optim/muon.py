"""Muon with the dtype of its Newton-Schulz iteration chosen from the machine.

torch.optim.Muon always orthogonalises in bf16 (`grad.bfloat16()`), which is right on GPUs and
AMX CPUs but ~100x slower than fp32 on an AVX2-only CPU: there the shipped Muon recipe trained at
213 tokens/s against AdamW's 1,580. This subclass keeps torch's state layout (one
`momentum_buffer` per matrix) and its hyperparameters, and only lets the caller pick the dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def orthogonalize(
    update: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype
) -> Tensor:
    """An approximately orthogonal matrix with the row/column spaces of `update` (US'V^T, S'
    near 1): Muon's quintic Newton-Schulz iteration X <- aX + (bA + cA^2)X with A = XX^T, run on
    the wide orientation so that A is the smaller Gram matrix."""
    a, b, c = coefficients
    tall = update.size(0) > update.size(1)
    x = update.to(dtype)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1: the iteration converges
    for _ in range(steps):
        gram = x @ x.T
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b*A + c*A@A
        x = torch.addmm(x, polynomial, x, beta=a)  # a*X + (bA + cA^2) X
    return x.T if tall else x


def lr_scale(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix learning-rate factor for `adjust_lr_fn`."""
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


class Muon(torch.optim.Muon):
    """torch.optim.Muon, orthogonalising in `ns_dtype` (bf16 where it is fast, else fp32)."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **options) -> None:
        super().__init__(params, **options)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("Muon.step takes no closure")
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            buffers: list[Tensor] = []
            self._init_group(group, params, grads, buffers)
            momentum, lr = group["momentum"], float(group["lr"])
            for param, grad, buffer in zip(params, grads, buffers, strict=True):
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalize(
                    update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype
                )
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(
                    update.to(param.dtype), alpha=-lr * lr_scale(group["adjust_lr_fn"], param.shape)
                )
        return None
