"""Weight-only quantization for CPU inference: int8 per output channel, or int4 in groups of 32.

Decoding one token reads every weight once, so on a CPU its speed is set by bytes moved: int4
weights read 8x fewer bytes than fp32. The matmuls run in PyTorch's own weight-only kernels
(`_weight_int4pack_mm_for_cpu`, `_weight_int8pack_mm`, the ones gpt-fast and torchao use) on
inputs in a compute dtype chosen from the machine: bf16 where the CPU has native bf16 (AMX,
AVX512-BF16), fp32 elsewhere, since an AVX2-only CPU runs bf16 matmuls ~100x slower than fp32 and
its bf16 path gave SmolLM2 a different (wrong) answer. Their outputs go back to the model's dtype,
so the residual stream, norms and attention can stay fp32. That matters: SmolLM2-135M with a bf16
residual stream stops answering "Paris".

int4 is asymmetric with a bf16 scale and zero point per group of 32 input channels, which is
GGUF's Q4_1 layout: a Q4_1 tensor, dequantized and quantized again here, gets back its own 4-bit
codes (scales are rounded to bf16 on every machine, so answers do not depend on the CPU), so `--quantize auto` decodes a Q4_1 file at the
precision it was published in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError

SCHEMES = ("none", "int8", "int4")
INT4_GROUP = 32


PREFILL_ROWS = 64
"""From this many rows (tokens x batch) on, dequantize to the compute dtype and use a plain
matmul: the weight-only kernels are built for decoding's few rows and run a 512-token prefill ~2x
slower than fp32. Below it they win: per layer they stayed faster up to 64-128 rows, and a
16-request server batch that dequantized every step decoded 3x slower (BENCHMARKS.md, serve)."""


class _WeightOnly(nn.Module):
    """Shared forward: the weight-only kernel for a few rows, a dequantized matmul for many."""

    in_features: int
    out_features: int
    bias: torch.Tensor | None
    compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.compute_dtype)
        if flat.shape[0] >= PREFILL_ROWS:
            y = F.linear(flat, self.dequantized().to(self.compute_dtype))
        else:
            y = self._kernel(flat)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def _kernel(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantized(self) -> torch.Tensor:
        """The weight (N, K) these codes stand for, in the scales' dtype."""
        raise NotImplementedError


class Int8Linear(_WeightOnly):
    """y = x @ (q * scale).T + bias with int8 codes q (N, K) and one scale per output row."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)
        codes = (w / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale.to(compute_dtype))  # the kernel wants the input's dtype
        self.compute_dtype = compute_dtype
        self.register_buffer("bias", _bias(linear))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def _kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(flat, self.codes, self.scale)

    def dequantized(self) -> torch.Tensor:
        return self.codes * self.scale[:, None]


class Int4Linear(_WeightOnly):
    """y = x @ W.T + bias with W = (q - 8) * scale + zero per group of 32 input channels.

    The codes are kept twice, 4 bits each: in the kernel's packed layout, and as plain nibbles
    (two per byte) for dequantizing, since the packed layout is the kernel's private business.
    """

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        w = linear.weight.detach().float()
        N, K = w.shape
        groups = w.reshape(N, K // INT4_GROUP, INT4_GROUP)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scale = ((high - low) / 15).clamp(min=1e-12)
        codes = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15)
        codes = codes.reshape(N, K).to(torch.int32)
        # The kernel computes (q - 8) * scale + zero, so zero sits at code 8, not at code 0.
        zero = low + 8 * scale
        scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        self.register_buffer("packed", packed)
        self.register_buffer("nibbles", (codes[:, 0::2] | codes[:, 1::2] << 4).to(torch.uint8))
        scales_and_zeros = scales_and_zeros.to(torch.bfloat16).to(compute_dtype)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", _bias(linear))
        self.in_features, self.out_features = K, N
        self.compute_dtype = compute_dtype

    def _kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.packed, INT4_GROUP, self.scales_and_zeros
        )

    def dequantized(self) -> torch.Tensor:
        N, K = self.out_features, self.in_features
        codes = torch.stack([self.nibbles & 15, self.nibbles >> 4], dim=-1).view(N, K)
        scale, zero = self.scales_and_zeros.unbind(-1)  # (K/32, N) each
        codes = codes.view(N, K // INT4_GROUP, INT4_GROUP).to(scale.dtype) - 8
        return (codes * scale.t()[..., None] + zero.t()[..., None]).view(N, K)

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        return linear.in_features % INT4_GROUP == 0 and linear.out_features % 16 == 0


def _bias(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach().clone()


Plan = str | dict[str, str]
"""One scheme for every linear layer, or {"default": scheme, "layers.0.attn.qkv": scheme, ...}."""


def quantize_weights(
    model: nn.Module, plan: Plan, compute_dtype: torch.dtype = torch.float32
) -> int:
    """Replace the model's nn.Linear layers with weight-only quantized ones, in place; returns how
    many were replaced. Layers the int4 kernel cannot take (output rows not a multiple of 16,
    inputs not a multiple of 32) fall back to int8. MLA's kv_up stays unquantized because the
    absorbed decode path reads its weight directly. Inference only: the result has no gradients.
    compute_dtype: what the quantized matmuls take as input (bf16 only where it is fast).
    """
    per_module = plan if isinstance(plan, dict) else {"default": plan}
    for scheme in per_module.values():
        if scheme not in SCHEMES:
            raise LmforgeError(
                f"unknown quantization {scheme!r}; choose one of {', '.join(SCHEMES)}"
            )
    if set(per_module.values()) == {"none"}:
        return 0
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise LmforgeError(
            f"int8/int4 weights use PyTorch's CPU kernels; on {device.type} use --quantize none"
        )
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or name == "kv_up":
                continue
            full_name = f"{parent_name}.{name}" if parent_name else name
            scheme = per_module.get(full_name, per_module.get("default", "none"))
            if scheme == "none":
                continue
            if scheme == "int4" and Int4Linear.fits(child):
                setattr(parent, name, Int4Linear(child, compute_dtype))
            else:
                setattr(parent, name, Int8Linear(child, compute_dtype))
            replaced += 1
    return replaced
