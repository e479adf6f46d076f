"""Position encodings: RoPE (with Llama-3.1 or YaRN scaling), sinusoidal tables and ALiBi slopes.

We use the "rotate half" layout of Hugging Face transformers (the two rotated halves of a head are
its first and second half, not interleaved pairs as in Meta's complex-number code), so HF
checkpoints load without permuting the query/key weights.
"""

from __future__ import annotations

import math

import torch

from lmforge.models.config import ModelConfig


def rope_inverse_frequencies(config: ModelConfig, head_dim: int | None = None) -> torch.Tensor:
    """Per-pair rotation speeds, shape (head_dim // 2,), in float32."""
    head_dim = head_dim or config.rope_dim
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    if config.rope_scaling == "llama3":
        inv_freq = _llama3_scale(inv_freq, config)
    elif config.rope_scaling == "yarn":
        inv_freq = _yarn_scale(inv_freq, config, head_dim)
    return inv_freq


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_attention_factor(config: ModelConfig) -> float:
    """YaRN's magnitude correction of cos/sin (1 for other scalings)."""
    if config.rope_scaling != "yarn":
        return 1.0
    factor, mscale, all_dim = (
        config.rope_scaling_factor,
        config.rope_yarn_mscale,
        config.rope_yarn_mscale_all_dim,
    )
    if mscale and all_dim:  # DeepSeek's variant
        return yarn_mscale(factor, mscale) / yarn_mscale(factor, all_dim)
    return yarn_mscale(factor)


def _yarn_scale(inv_freq: torch.Tensor, config: ModelConfig, head_dim: int) -> torch.Tensor:
    # YaRN (arXiv 2309.00071): keep fast-rotating pairs, interpolate slow ones by `factor`, and
    # ramp linearly between the pairs that make beta_fast and beta_slow turns over the old context.
    base, old_context = config.rope_theta, config.rope_original_context_length

    def pair_index(turns: float) -> float:
        return head_dim * math.log(old_context / (turns * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(pair_index(config.rope_yarn_beta_fast)), 0)
    high = min(math.ceil(pair_index(config.rope_yarn_beta_slow)), head_dim - 1)
    high = high + 0.001 if low == high else high  # avoid dividing by zero
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp
    return inv_freq / config.rope_scaling_factor * ramp + inv_freq * extrapolate


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


def rope_tables(
    config: ModelConfig, device: torch.device | None = None, head_dim: int | None = None
):
    """cos and sin for every position up to the context length, each (context_length, head_dim)."""
    inv_freq = rope_inverse_frequencies(config, head_dim).to(device)
    positions = torch.arange(config.context_length, dtype=torch.float32, device=device)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    scale = rope_attention_factor(config)
    return angles.cos() * scale, angles.sin() * scale


def sinusoidal_table(context_length: int, dim: int, device=None) -> torch.Tensor:
    """Fixed (context_length, dim) encodings of "Attention Is All You Need": sin, cos interleaved."""
    positions = torch.arange(context_length, dtype=torch.float32, device=device)[:, None]
    rates = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(context_length, dim, device=device)
    table[:, 0::2] = torch.sin(positions * rates)
    table[:, 1::2] = torch.cos(positions * rates[: dim // 2])
    return table


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al.): a geometric series from 2^(-8/n); for a head count that is
    not a power of two, the closest power's slopes plus every other slope of the next power."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start**i for i in range(1, n + 1)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(closest)
    if closest < num_heads:
        slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, head_dim) by cos/sin of shape (T, head_dim) or (B, 1, T, head_dim)."""
    # Under autocast q/k are bf16 while the tables are fp32: rotate in q/k's dtype, not fp32.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin
