"""Stage 3: training throughput and MFU, measured by `lmforge train`'s own log (metrics.jsonl).

GPT-2 124M: one process, bf16 autocast, torch.compile, flash SDPA, fused AdamW (vocab padded to
50304 as nanoGPT and llm.c do: a multiple of 128 for the LM-head matmul). Llama-3.2-1B: under
`lmforge launch --nproc-per-node 1` with FSDP (bf16 gathers, fp32 gradient reduction), compiled
per block. MFU is reported against the GPU's published dense bf16 peak and against the bf16
matmul peak lmforge measures at start. Each run is stopped once it has logged enough intervals
(see run_until_logged), so no final checkpoint is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from allreduce_estimate import SETUPS, allreduce_seconds, model_numbers
from parallel_throughput import TrainSettings, medians, train_command

from gpu_stages.common import (
    TINY_VOCAB,
    StageContext,
    data_flags,
    published_peak_tflops,
    run_until_logged,
)


@dataclass(frozen=True)
class Run:
    settings: TrainSettings
    launched: bool
    """Under `lmforge launch --nproc-per-node 1`, or a plain `lmforge train` process."""
    strategy: str
    vocab_size: int | None
    """None keeps the preset's."""


GPU_RUNS = {
    "gpt2": Run(
        TrainSettings("gpt2", 10_000, 1024, 16, 32768, "bf16", True, 10), False, "ddp", 50304
    ),
    "llama3.2-1b": Run(
        TrainSettings("llama3.2-1b", 10_000, 2048, 4, 16384, "bf16", True, 4), True, "fsdp", None
    ),
}
DRY_RUNS = {
    "gpt2": Run(TrainSettings("tiny-gpt2", 10_000, 64, 4, 256, "fp32", False, 2), False, "ddp", TINY_VOCAB),
    "llama3.2-1b": Run(TrainSettings("tiny-llama", 10_000, 64, 4, 256, "fp32", False, 2), True, "fsdp", TINY_VOCAB),
}  # fmt: skip
INTERVALS = 4
"""Log intervals per run: the first (warm-up and compilation) is left out of the medians."""


def run_gpt2(ctx: StageContext) -> None:
    measure(ctx, "gpt2")


def run_llama(ctx: StageContext) -> None:
    measure(ctx, "llama3.2-1b")


def measure(ctx: StageContext, name: str) -> None:
    spec = (DRY_RUNS if ctx.dry_run else GPU_RUNS)[name]
    settings = spec.settings
    parameters, flops_token = model_numbers(settings.preset, settings.seq_len, spec.vocab_size)
    probe(ctx, settings)
    out = ctx.work / f"throughput-{name}"
    extra = ("--model.vocab_size", str(spec.vocab_size)) if spec.vocab_size else ()
    data = data_flags(ctx.work)
    command = train_command(settings, out, 1, spec.strategy, "none", data, extra)
    if not spec.launched:  # plain `lmforge train`: one process, no process group
        command = [*command[:3], *command[command.index("train") :]]
    ctx.record("command", " ".join(["lmforge", *command[3:]]))
    records = run_until_logged(
        command, out / "metrics.jsonl", INTERVALS, ctx.work / f"{name}.log", 3600
    )
    result = medians(records)
    tokens_per_s = result["tokens_per_s"]
    ctx.record("tokens/s", round(tokens_per_s))
    ctx.record("MFU vs measured matmul peak", f"{100 * result['mfu']:.1f}%")
    ctx.record("measured peak TFLOP/s", round(flops_token * tokens_per_s / result["mfu"] / 1e12, 1))
    peak = None if ctx.dry_run else published_peak_tflops(device_name())
    ctx.record(
        "MFU vs published bf16 peak",
        f"{100 * flops_token * tokens_per_s / (peak * 1e12):.1f}%" if peak else "n/a",
    )
    ctx.record("peak memory GiB", round(result["peak_memory_gib"], 2))
    ctx.record("loss at last interval", round(result["loss"], 4))
    if name == "gpt2":  # what data parallelism over 8 GPUs adds (allreduce_estimate.py)
        _, _, bandwidth = SETUPS[0]
        reduce_ms = 1000 * allreduce_seconds(parameters, 8, bandwidth)
        compute_ms = 1000 * settings.micro_batch * settings.seq_len / tokens_per_s
        ctx.record(
            "8-GPU fp32 all-reduce vs one micro-batch's step (NVLink 4 estimate)",
            f"{reduce_ms:.2f} ms vs {compute_ms:.1f} ms",
        )


def probe(ctx: StageContext, settings: TrainSettings) -> None:
    """Which SDPA kernel and AdamW implementation the run will use: one layer of the same shape,
    forward and backward under the profiler."""
    import dataclasses

    import torch

    from lmforge.config import OptimConfig
    from lmforge.evals.loss import batch_loss
    from lmforge.models.presets import model_preset
    from lmforge.models.transformer import Transformer
    from lmforge.optim.optimizers import build_optimizer
    from lmforge.runtime import autocast_context

    config = model_preset(settings.preset, vocab_size=256)
    device = torch.device(ctx.device)
    with torch.device(device):
        model = Transformer(dataclasses.replace(config, num_layers=1))
    optimizer = build_optimizer(model, OptimConfig(), device)
    ctx.record("AdamW", "fused" if optimizer.defaults.get("fused") else "foreach")
    tokens = torch.randint(0, 256, (2, settings.seq_len + 1), device=device)
    batch = (tokens[:, :-1], tokens[:, 1:])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        batch_loss(model, batch, autocast_context(device, settings.dtype)).backward()
    names = {event.key for event in profile.key_averages()}
    kernels = sorted(n for n in names if "scaled_dot_product" in n and "backward" not in n)
    ctx.record("SDPA kernel", ", ".join(k.removeprefix("aten::") for k in kernels) or "none seen")
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)
