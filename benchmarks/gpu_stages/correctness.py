"""Stage 2: the GPU computes what the CPU computes. A tiny Llama trains 20 steps on the CPU (the
reference) and on the GPU: fp32 with deterministic kernels and TF32 off must match the CPU's
losses within 1e-4 relative, and a second fp32 GPU run must repeat the first exactly; bf16
autocast must stay within BF16_RTOL of the fp32 reference at every step.

lmforge has no `train.deterministic` option, so the stage sets what makes CUDA deterministic
itself (CUBLAS_WORKSPACE_CONFIG, torch.use_deterministic_algorithms) and keeps the training
loop from turning TF32 on (its enable_fast_math hook), for the fp32 GPU runs only.
"""

from __future__ import annotations

import contextlib
import os

from gpu_stages.common import (
    TINY_VOCAB,
    CheckFailed,
    StageContext,
    corpus_file,
    prepared_data,
    relative_difference,
)

FP32_RTOL = 1e-4
BF16_RTOL = 2e-2
"""bf16 autocast rounds every matmul input to 8 mantissa bits; over 20 steps of a tiny model its
losses stay within 2% of fp32 (tighter would flag normal bf16 noise, looser would hide a wrong
cast)."""
STEPS = 20


def run(ctx: StageContext) -> None:
    # Before any CUDA work: cuBLAS reads it when it creates its handle.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    reference = train_losses(ctx, "cpu", "fp32", "cpu-fp32")
    ctx.record("cpu fp32 final loss", round(reference[-1], 5))
    with deterministic_fp32():
        first = train_losses(ctx, ctx.device, "fp32", "device-fp32")
        again = train_losses(ctx, ctx.device, "fp32", "device-fp32-again")
    fp32_error = relative_difference(first, reference)
    ctx.record(
        f"{ctx.device} fp32 max rel diff vs cpu (tolerance {FP32_RTOL:g})", f"{fp32_error:.2e}"
    )
    ctx.record(f"{ctx.device} fp32 repeat identical", first == again)
    bf16 = train_losses(ctx, ctx.device, "bf16", "device-bf16")
    bf16_error = relative_difference(bf16, reference)
    ctx.record(
        f"{ctx.device} bf16 max rel diff vs cpu fp32 (tolerance {BF16_RTOL:g})", f"{bf16_error:.2e}"
    )
    if fp32_error > FP32_RTOL:
        raise CheckFailed(f"fp32 losses differ from the CPU's by {fp32_error:.2e} relative")
    if first != again:
        raise CheckFailed("two deterministic fp32 runs gave different losses")
    if bf16_error > BF16_RTOL:
        raise CheckFailed(f"bf16 losses differ from fp32 by {bf16_error:.2e} relative")


@contextlib.contextmanager
def deterministic_fp32():
    """Deterministic CUDA kernels and no TF32 while it is active (no effect on a CPU run)."""
    import torch
    import torch.nn.attention

    from lmforge.train import loop

    fast_math = loop.enable_fast_math
    loop.enable_fast_math = lambda device: torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:  # SDPA's math backend: the fused kernels' fp32 backward may accumulate with atomics
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            yield
    finally:
        loop.enable_fast_math = fast_math
        torch.use_deterministic_algorithms(False)


def train_losses(ctx: StageContext, device: str, dtype: str, name: str) -> list[float]:
    """The per-step losses of `lmforge train` (in this process) on a tiny Llama."""
    from lmforge.config import config_from_dict
    from lmforge.train.loop import train

    data = {
        "model": {"preset": "tiny-llama", "vocab_size": TINY_VOCAB},
        "data": {"source": str(corpus_file(ctx.work)), "tokenizer": "byte",
                 "dir": str(prepared_data(ctx.work))},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        "train": {"out_dir": str(ctx.work / "correctness" / name), "max_steps": STEPS,
                  "seq_len": 64, "micro_batch_size": 4, "batch_tokens": 256, "dtype": dtype,
                  "device": device, "log_interval": 1, "eval_interval": 10_000,
                  "eval_batches": 1, "peak_tflops": 1.0},
        "logging": {"progress_bar": False},
    }  # fmt: skip
    result = train(config_from_dict(data))
    return [result.losses[step] for step in range(1, STEPS + 1)]
