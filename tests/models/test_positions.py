"""RoPE: rotation properties, the HF rotate-half layout, and Llama-3.1 frequency scaling."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build, tiny_model

from lmforge.models.positions import apply_rope, rope_inverse_frequencies, rope_tables


def reference_llama3_frequencies(config) -> list[float]:
    """Meta's reference loop (llama-models, apply_scaling), written independently."""
    head_dim = config.attn_head_dim
    base = [1.0 / (config.rope_theta ** (i / head_dim)) for i in range(0, head_dim, 2)]
    factor = config.rope_scaling_factor
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    old = config.rope_original_context_length
    out = []
    for freq in base:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(freq)
        elif wavelen > old / low:
            out.append(freq / factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return out


def test_unscaled_frequencies():
    config = tiny_model(rope_theta=10000.0)
    expected = [10000.0 ** (-i / 16) for i in range(0, 16, 2)]
    torch.testing.assert_close(rope_inverse_frequencies(config), torch.tensor(expected))


@pytest.mark.parametrize("original", [64, 2048, 8192])
def test_llama3_scaling_matches_reference(original):
    config = tiny_model(
        dim=256,
        num_heads=2,  # head_dim 128, as in Llama 3
        rope_theta=500000.0,
        rope_scaling="llama3",
        rope_scaling_factor=8.0,
        rope_original_context_length=original,
    )
    expected = torch.tensor(reference_llama3_frequencies(config), dtype=torch.float32)
    actual = rope_inverse_frequencies(config)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=0)
    unscaled = rope_inverse_frequencies(tiny_model(dim=256, num_heads=2, rope_theta=500000.0))
    assert actual[0] == unscaled[0]  # the highest frequency is never scaled
    assert actual[-1] == pytest.approx(unscaled[-1].item() / 8.0, rel=1e-6)  # the lowest is /8


def test_llama3_scaling_changes_the_model_output():
    plain = tiny_model()
    scaled = tiny_model(rope_scaling="llama3", rope_original_context_length=64)
    a, b = build(plain), build(scaled)
    b.load_state_dict(a.state_dict())
    tokens = torch.randint(0, 97, (1, 40))
    assert not torch.allclose(a(tokens), b(tokens))


def test_rope_tables_layout_is_rotate_half():
    config = tiny_model()
    cos, sin = rope_tables(config)
    assert cos.shape == sin.shape == (config.context_length, config.attn_head_dim)
    half = config.attn_head_dim // 2
    torch.testing.assert_close(cos[:, :half], cos[:, half:])  # halves share frequencies
    assert torch.equal(cos[0], torch.ones(config.attn_head_dim))
    assert torch.equal(sin[0], torch.zeros(config.attn_head_dim))


def test_rope_preserves_norm_and_encodes_relative_position():
    config = tiny_model()
    cos, sin = rope_tables(config)
    torch.manual_seed(0)
    q = torch.randn(1, 1, 1, 16)
    k = torch.randn(1, 1, 1, 16)

    def rotated(x, position):
        return apply_rope(x, cos[position : position + 1], sin[position : position + 1])

    torch.testing.assert_close(rotated(q, 37).norm(), q.norm())
    # <R_m q, R_n k> depends only on m - n.
    score_a = (rotated(q, 10) * rotated(k, 3)).sum()
    score_b = (rotated(q, 50) * rotated(k, 43)).sum()
    score_c = (rotated(q, 50) * rotated(k, 42)).sum()
    torch.testing.assert_close(score_a, score_b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score_a, score_c, atol=1e-4)


def test_apply_rope_keeps_low_precision_dtype():
    config = tiny_model()
    cos, sin = rope_tables(config)
    x = torch.randn(2, 4, 8, 16, dtype=torch.bfloat16)
    assert apply_rope(x, cos[:8], sin[:8]).dtype == torch.bfloat16
