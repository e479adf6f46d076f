"""The decoding setup `sample` and `chat` share: activation dtype, weight-only quantization and
whether to compile the one-token step, each with an `auto` default that picks the fast path.

Measured on a 2-core CPU with SmolLM2-135M (BENCHMARKS.md, decode): int4 weights plus a compiled
step decode 2.7-3.2x faster than fp32 eager, int4 alone ~1.8x. Compiling costs ~37 s the first
time (~6 s once Inductor's on-disk cache has it), so `auto` compiles only when a call asks for
enough tokens to repay that.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.checkpoint.directory import INFO_FILE
from lmforge.json_files import read_json_object
from lmforge.models.quantize import Plan, quantize_weights
from lmforge.models.transformer import Transformer
from lmforge.runtime import DTYPES, bf16_is_fast

COMPILE_FROM_TOKENS = 1024
"""`--compile auto` compiles when a call generates at least this many tokens in all rows."""


def quantization_plan(directory: Path, device: torch.device, quantize: str) -> Plan:
    """`auto`: on a CPU with fast bf16, the precision the weights were published at (an imported
    GGUF records its tensor types in checkpoint.json, e.g. Q4_1 -> int4); otherwise none. On a
    CPU without native bf16 the weight-only kernels run on fp32 inputs, and SmolLM2 decoded at
    8.4 tok/s with them against 31 tok/s in plain fp32 (AVX2 emulation, BENCHMARKS.md), so
    `auto` decodes the dequantized weights in fp32 there; --quantize int4/int8 still forces it."""
    if quantize != "auto":
        return quantize
    if device.type != "cpu" or not bf16_is_fast(device):
        return "none"
    info = read_json_object(Path(directory) / INFO_FILE, default={})
    return info.get("quantization", "none")


def prepare_for_decoding(
    model: Transformer, directory: Path, dtype: str, quantize: str
) -> tuple[Transformer, str]:
    """The model cast and quantized for decoding, and a short description of what was done."""
    device = model.token_embedding.weight.device
    plan = quantization_plan(directory, device, quantize)
    schemes = set(plan.values()) if isinstance(plan, dict) else {plan}
    if dtype == "auto":
        # On a CPU the residual stream, norms and attention stay fp32 (quantized layers run their
        # matmuls in bf16 inside where the CPU has native bf16): at batch 1 fp32 is as fast as bf16 there, and SmolLM2-135M
        # with a bf16 residual stream no longer answers "Paris" to the capital of France.
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    if schemes == {"none"}:
        return model, f"{dtype} weights, {dtype} activations"
    compute = "bf16" if dtype == "bf16" or bf16_is_fast(device) else "fp32"
    quantize_weights(model, plan, DTYPES[compute])
    weights = "/".join(sorted(schemes - {"none"}))
    return model, f"{weights} weights ({compute} matmuls), {dtype} activations"


def should_compile(mode: str, new_tokens: int) -> bool:
    if mode == "auto":
        return new_tokens >= COMPILE_FROM_TOKENS
    return mode == "on"
