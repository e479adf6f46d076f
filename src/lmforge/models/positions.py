"""Rotary position embeddings (RoPE), with Llama-3.1 frequency scaling.

We use the "rotate half" layout of Hugging Face transformers (the two rotated halves of a head are
its first and second half, not interleaved pairs as in Meta's complex-number code), so HF
checkpoints load without permuting the query/key weights.
"""

from __future__ import annotations

import math

import torch

from lmforge.models.config import ModelConfig


def rope_inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """Per-pair rotation speeds, shape (head_dim // 2,), in float32."""
    head_dim = config.attn_head_dim
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    if config.rope_scaling == "llama3":
        inv_freq = _llama3_scale(inv_freq, config)
    return inv_freq


def _llama3_scale(inv_freq: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    # Llama 3.1: slow down low frequencies by `factor`, keep high ones, interpolate in between.
    factor = config.rope_scaling_factor
    old_context = config.rope_original_context_length
    low_freq_wavelen = old_context / config.rope_low_freq_factor
    high_freq_wavelen = old_context / config.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - config.rope_low_freq_factor) / (
        config.rope_high_freq_factor - config.rope_low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_tables(config: ModelConfig, device: torch.device | None = None):
    """cos and sin for every position up to the context length, each (context_length, head_dim)."""
    inv_freq = rope_inverse_frequencies(config).to(device)
    positions = torch.arange(config.context_length, dtype=torch.float32, device=device)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, head_dim) by cos/sin of shape (T, head_dim) or (B, 1, T, head_dim)."""
    # Under autocast q/k are bf16 while the tables are fp32: rotate in q/k's dtype, not fp32.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin
