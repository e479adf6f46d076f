"""Stage: a Llama-3.2-3B shape built on the meta device, sharded with FSDP2 (a one-rank group on
the one GPU), materialised on the GPU and trained 3 steps: peak memory against the memory
planner's estimate for the same layout, tokens/s (no tensor parallelism), and the build time.

This is lmforge's own start-up path (train/setup.py): build_on_meta -> parallelize -> materialize.
"""

from __future__ import annotations

import time

from gpu_stages.common import CheckFailed, StageContext

GPU = {"preset": "llama3.2-3b", "seq_len": 2048, "micro_batch": 1, "dtype": "bf16", "ac": "full"}
DRY = {"preset": "tiny-llama", "seq_len": 32, "micro_batch": 2, "dtype": "fp32", "ac": "full"}
STEPS = 3
PLANNER_TOLERANCE = 0.25
"""The measured peak must lie within this fraction of the planner's estimate."""


def run(ctx: StageContext) -> None:
    import torch

    from lmforge.config import OptimConfig, ParallelConfig
    from lmforge.evals.loss import batch_loss
    from lmforge.models.counting import build_on_meta
    from lmforge.models.presets import model_preset
    from lmforge.optim.optimizers import build_optimizer
    from lmforge.parallel.dist import init_distributed, shutdown
    from lmforge.parallel.materialize import materialize
    from lmforge.parallel.parallelize import clip_gradients, parallelize
    from lmforge.runtime import autocast_context, peak_memory_bytes, synchronize

    s = DRY if ctx.dry_run else GPU
    info = init_distributed(ctx.device, "auto", need_group=True)
    config = model_preset(s["preset"], **({"vocab_size": 320} if ctx.dry_run else {}))
    ctx.record("model", f"{s['preset']}, seq {s['seq_len']} x {s['micro_batch']}, {s['dtype']}")
    try:
        torch.manual_seed(0)
        start = time.perf_counter()
        model = build_on_meta(config)
        layout = ParallelConfig(strategy="fsdp", activation_checkpointing=s["ac"])
        parallel = parallelize(
            model, layout, info, s["dtype"], False, lambda m: materialize(m, info.device)
        )
        synchronize(info.device)
        ctx.record("build on meta + materialise, s", round(time.perf_counter() - start, 2))
        optimizer = build_optimizer(model, OptimConfig(), info.device)
        autocast = autocast_context(info.device, s["dtype"])
        shape = (s["micro_batch"], s["seq_len"] + 1)
        timed = 0.0
        for step in range(STEPS):
            tokens = torch.randint(0, config.vocab_size, shape, device=info.device)
            begin = time.perf_counter()
            loss = batch_loss(parallel.forward, (tokens[:, :-1], tokens[:, 1:]), autocast)
            loss.backward()
            clip_gradients(model, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(info.device)
            if step:  # the first step allocates the optimizer state and warms kernels
                timed += time.perf_counter() - begin
        tokens_per_s = (STEPS - 1) * s["micro_batch"] * s["seq_len"] / timed
        ctx.record("tokens/s (TP=1)", round(tokens_per_s))
        peak = peak_memory_bytes(info.device)
        ctx.record("peak memory GiB", round(peak / 2**30, 2))
        estimate = planned_bytes(config, s, info.device.type)
        ctx.record("planner estimate GiB", round(estimate / 2**30, 2))
        if not ctx.dry_run and abs(peak - estimate) > PLANNER_TOLERANCE * estimate:
            raise CheckFailed(
                f"peak {peak / 2**30:.1f} GiB is more than {PLANNER_TOLERANCE:.0%} away from the "
                f"planner's {estimate / 2**30:.1f} GiB"
            )
    finally:
        shutdown(info)


def planned_bytes(config, settings: dict, device_type: str) -> int:
    """The memory planner's per-rank total for this exact layout."""
    from lmforge.parallel.planner import Layout, estimate

    layout = Layout(strategy="fsdp", activation_checkpointing=settings["ac"])
    return estimate(
        config,
        layout,
        world_size=1,
        micro_batch=settings["micro_batch"],
        seq_len=settings["seq_len"],
        dtype=settings["dtype"],
    ).total
