"""Stage 4: what activation checkpointing buys and costs on Llama-3.2-1B (FSDP, bf16, eager).

For each mode (none, selective, full) the largest micro-batch that fits is found by doubling
until a step runs out of memory, then trying the midpoint once; a model that ran out of memory
mid-step is rebuilt rather than trusted. Tokens/s and peak memory are measured at that
micro-batch, and at the largest micro-batch of `none` (equal work: the recomputation's cost).
Steps run in this process with lmforge's own model, parallelize() and optimizer.
"""

from __future__ import annotations

import gc
import time

from gpu_stages.common import StageContext

GPU = {"preset": "llama3.2-1b", "seq_len": 2048, "dtype": "bf16", "max_micro_batch": 64}
DRY = {"preset": "tiny-llama", "seq_len": 32, "dtype": "fp32", "max_micro_batch": 8}
DRY_RUN_CAPACITY = 4
"""Dry run: micro-batches above this raise a simulated out-of-memory error mid-step, so the
search and the rebuild after it run on a CPU too."""
TIMED_STEPS = 3


class Trainer:
    """A freshly built model, FSDP-wrapped with one checkpointing mode, and its optimizer."""

    def __init__(self, ctx: StageContext, settings: dict, mode: str, info) -> None:
        import torch

        from lmforge.config import OptimConfig, ParallelConfig
        from lmforge.models.presets import model_preset
        from lmforge.models.transformer import Transformer
        from lmforge.optim.optimizers import build_optimizer
        from lmforge.parallel.parallelize import parallelize
        from lmforge.runtime import autocast_context

        self.ctx, self.settings, self.device = ctx, settings, info.device
        # The tiny dry-run preset takes its vocabulary from a tokenizer; give it one.
        config = model_preset(settings["preset"], **({"vocab_size": 256} if ctx.dry_run else {}))
        torch.manual_seed(0)
        with torch.device(self.device):  # initialised on the GPU: seconds, not a minute
            model = Transformer(config)
        parallel_config = ParallelConfig(strategy="fsdp", activation_checkpointing=mode)
        self.parallel = parallelize(model, parallel_config, info, settings["dtype"], compile=False)
        self.optimizer = build_optimizer(model, OptimConfig(), self.device)
        self.autocast = autocast_context(self.device, settings["dtype"])
        self.vocab = config.vocab_size
        # The AdamW moments appear at the first step and stay: make them exist before any
        # micro-batch is tried, or a fresh model's first step would fit more than later ones.
        self.step(1)

    def step(self, micro_batch: int) -> None:
        import torch

        from lmforge.evals.loss import batch_loss
        from lmforge.parallel.parallelize import clip_gradients
        from lmforge.runtime import synchronize

        tokens = torch.randint(
            0, self.vocab, (micro_batch, self.settings["seq_len"] + 1), device=self.device
        )
        loss = batch_loss(self.parallel.forward, (tokens[:, :-1], tokens[:, 1:]), self.autocast)
        loss.backward()
        if self.ctx.dry_run and micro_batch > DRY_RUN_CAPACITY:
            raise torch.OutOfMemoryError(f"dry run: simulated out of memory at {micro_batch}")
        clip_gradients(self.parallel.model, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)

    def fits(self, micro_batch: int) -> bool:
        import torch

        try:
            self.step(micro_batch)
            return True
        except torch.OutOfMemoryError:
            return False

    def measure(self, micro_batch: int) -> tuple[float, float]:
        """(tokens/s, peak memory GiB) over TIMED_STEPS steps after one warm-up step."""
        import torch

        from lmforge.runtime import peak_memory_bytes

        self.step(micro_batch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        for _ in range(TIMED_STEPS):
            self.step(micro_batch)
        seconds = time.perf_counter() - start
        tokens = TIMED_STEPS * micro_batch * self.settings["seq_len"]
        return tokens / seconds, peak_memory_bytes(self.device) / 2**30

    def close(self) -> None:
        import torch

        del self.parallel, self.optimizer
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def largest_micro_batch(ctx: StageContext, settings: dict, mode: str, info) -> tuple[int, Trainer]:
    """Doubling, then one midpoint; returns the micro-batch and a trainer that is still sound."""
    trainer = Trainer(ctx, settings, mode, info)
    fitting, failing = 0, None
    size = 1
    while size <= settings["max_micro_batch"]:
        if not trainer.fits(size):
            failing = size
            break
        fitting, size = size, size * 2
    if failing is not None:
        trainer.close()
        trainer = Trainer(ctx, settings, mode, info)
        middle = (fitting + failing) // 2
        if fitting and middle > fitting:
            if trainer.fits(middle):
                fitting = middle
            else:
                trainer.close()
                trainer = Trainer(ctx, settings, mode, info)
    if fitting == 0:
        raise RuntimeError(f"activation checkpointing {mode}: not even one sequence fits")
    return fitting, trainer


def run(ctx: StageContext) -> None:
    import torch

    from lmforge.parallel.dist import init_distributed, shutdown

    settings = DRY if ctx.dry_run else GPU
    info = init_distributed(ctx.device, "auto", need_group=True)  # FSDP: a one-rank group
    ctx.record(
        "model",
        f"{settings['preset']}, seq {settings['seq_len']}, {settings['dtype']}, fsdp, eager",
    )
    reference = None
    try:
        for mode in ("none", "selective", "full"):
            micro_batch, trainer = largest_micro_batch(ctx, settings, mode, info)
            try:
                tokens_per_s, memory = trainer.measure(micro_batch)
            except torch.OutOfMemoryError:  # it fit once, not every time (fragmentation)
                trainer.close()
                trainer, micro_batch = (
                    Trainer(ctx, settings, mode, info),
                    max(1, micro_batch * 3 // 4),
                )
                tokens_per_s, memory = trainer.measure(micro_batch)
            ctx.record(f"{mode}: largest micro-batch", micro_batch)
            ctx.record(f"{mode}: tokens/s, peak GiB at it", f"{tokens_per_s:,.0f}, {memory:.1f}")
            reference = reference or micro_batch
            if micro_batch != reference:
                tokens_per_s, memory = trainer.measure(reference)
                ctx.record(
                    f"{mode}: tokens/s, peak GiB at {reference}",
                    f"{tokens_per_s:,.0f}, {memory:.1f}",
                )
            trainer.close()
    finally:
        shutdown(info)
