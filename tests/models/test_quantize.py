"""Weight-only int8/int4 linears against their dequantized weights and against GGUF's Q4_1."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import build, tiny_model
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.quantize import PREFILL_ROWS, Int4Linear, Int8Linear, quantize_weights


def linear(out_features: int, in_features: int, bias: bool = False, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def kernel_weight(layer) -> torch.Tensor:
    """The weight the decode kernel multiplies by: the kernel run on identity rows, a few at a time
    (few rows take the kernel path, many the dequantized one)."""
    eye = torch.eye(layer.in_features)
    bias = 0 if layer.bias is None else layer.bias
    return torch.cat([layer(rows) - bias for rows in eye.split(PREFILL_ROWS - 1)]).float().t()


@pytest.mark.parametrize("kind", [Int8Linear, Int4Linear])
def test_quantized_linear_is_close_to_the_float_one(kind):
    layer = linear(96, 128, bias=True)
    quantized = kind(layer)
    for rows in (2, 40):  # the decode kernel, then the dequantized prefill path
        x = torch.randn(rows, 5, 128)
        y = quantized(x)
        reference = layer(x)
        error = (y - reference).norm() / reference.norm()
        assert y.shape == (rows, 5, 96) and y.dtype == torch.float32
        assert error < (0.02 if kind is Int8Linear else 0.12), error
    # Both paths multiply by the same weights (up to bf16 rounding of the kernel's output).
    torch.testing.assert_close(
        quantized.dequantized().float(), kernel_weight(quantized), atol=1e-2, rtol=1e-2
    )


def test_int8_output_is_exactly_the_dequantized_matmul():
    layer = linear(48, 64)
    quantized = Int8Linear(layer)
    x = torch.randn(4, 64).bfloat16()
    expected = F.linear(x.float(), quantized.dequantized().float())
    torch.testing.assert_close(quantized(x).float(), expected, atol=2e-2, rtol=1e-2)


def test_q4_1_weights_come_back_with_their_own_codes():
    # A GGUF Q4_1 tensor, dequantized (as lmforge imports it), then quantized to int4 again: the
    # int4 weights equal the Q4_1 values up to bf16 rounding of the group scale and zero.
    torch.manual_seed(1)
    original = torch.randn(32, 128).numpy()
    q4_1 = gguf.quants.quantize(original, gguf.GGMLQuantizationType.Q4_1)
    published = torch.from_numpy(
        np.array(gguf.quants.dequantize(q4_1, gguf.GGMLQuantizationType.Q4_1))
    )
    layer = linear(32, 128)
    layer.weight.data = published.clone()
    quantized = Int4Linear(layer)
    rebuilt = kernel_weight(quantized)
    torch.testing.assert_close(quantized.dequantized().float(), rebuilt, atol=1e-2, rtol=1e-2)
    group_range = published.reshape(32, 4, 32).aminmax(dim=-1)
    step = ((group_range.max - group_range.min) / 15).repeat_interleave(32, dim=1)
    # Within a small fraction of one 4-bit step (bf16 rounding), far below the step itself.
    assert ((rebuilt - published).abs() / step).max() < 0.1
    assert (rebuilt - published).abs().max() < (
        published - torch.from_numpy(original)
    ).abs().max() / 4


def test_plan_picks_a_scheme_per_module_and_falls_back_where_int4_cannot_go():
    config = tiny_model("tiny-llama", vocab_size=100, dim=64)
    model = build(config).to(torch.bfloat16)
    plan = {"default": "int4", "lm_head": "int8", "layers.1.ffn.down": "none"}
    replaced = quantize_weights(model, plan)
    assert isinstance(model.layers[0].attn.qkv, Int4Linear)
    assert isinstance(model.lm_head, Int8Linear)  # the plan says int8
    assert isinstance(model.layers[1].ffn.down, nn.Linear)  # the plan says none
    assert replaced == 2 * 4 - 1 + 1
    odd = build(tiny_model("tiny-llama", vocab_size=100, dim=48)).to(torch.bfloat16)
    quantize_weights(odd, "int4")  # 48 inputs: not a multiple of the group of 32
    assert isinstance(odd.layers[0].attn.qkv, Int8Linear)


def test_quantized_model_logits_track_the_bf16_model():
    model = build(tiny_model("tiny-llama", vocab_size=128, dim=64, init_std=0.1)).bfloat16()
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(2))
    reference = model(tokens).float()
    # Random weights are int4's worst case (no outliers to spare); a wrong zero point gives > 1.
    for scheme, bound in (("int8", 0.03), ("int4", 0.35)):
        quantized = build(tiny_model("tiny-llama", vocab_size=128, dim=64, init_std=0.1))
        quantized = quantized.bfloat16()
        quantize_weights(quantized, scheme)
        error = (quantized(tokens).float() - reference).norm() / reference.norm()
        assert error < bound, (scheme, error)


def test_unknown_scheme_is_refused():
    model = build(tiny_model("tiny-llama", vocab_size=100))
    with pytest.raises(LmforgeError, match="unknown quantization 'int3'"):
        quantize_weights(model, {"default": "int3"})


def test_quantization_is_refused_off_the_cpu():
    with torch.device("meta"):
        model = build(tiny_model("tiny-llama", vocab_size=100))
    with pytest.raises(LmforgeError, match="on meta use --quantize none"):
        quantize_weights(model, "int8")


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_fp32_compute_never_touches_bf16_matmuls(kind):
    """CPUs without native bf16 run quantized layers in fp32: scales, kernel inputs and the
    dequantized prefill matmul, which then agree with the fp32 matmul of the dequantized weight."""
    layer = nn.Linear(64, 32, bias=True)
    quantized = (Int8Linear if kind == "int8" else Int4Linear)(layer, torch.float32)
    assert quantized.compute_dtype == torch.float32
    scales = quantized.scale if kind == "int8" else quantized.scales_and_zeros
    assert scales.dtype == torch.float32
    weight = quantized.dequantized().float()
    assert weight.dtype == torch.float32
    for rows in (1, PREFILL_ROWS):  # the weight-only kernel, then the dequantized matmul
        x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(rows))
        expected = x @ weight.t() + layer.bias.detach()
        got = quantized(x)
        assert got.dtype == torch.float32
        assert (got - expected).norm() / expected.norm() < 5e-3, rows
