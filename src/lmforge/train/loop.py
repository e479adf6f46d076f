"""`lmforge train`: the one training loop, for one process or many (torchrun).

Three parts, as in torchtitan: set up (setup.py: process group, data, tokenizer, model, parallel
strategy, optimizer, resume), then for each step `train_step` (step.py: accumulate micro-batches,
clip, judge the loss, step) and the periodic work (periodic.py: logs, evaluation, checkpoints,
early stopping, stop signals); this file is the driver. Rank 0 alone logs, prints and writes the
single-process checkpoint files; every rank writes its shard of the optimizer state.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from lmforge.config import RunConfig, dump_toml
from lmforge.config_checks import check_run_config
from lmforge.errors import ConfigError
from lmforge.optim.optimizers import check_optimizer_config
from lmforge.parallel.dist import DistInfo, decided_by_main, init_distributed, shutdown
from lmforge.parallel.parallelize import check_parallel_config, needs_process_group
from lmforge.runtime import choose_precision, choose_threads
from lmforge.train.health import ROLLBACK
from lmforge.train.objective import Objective, PretrainObjective
from lmforge.train.periodic import (
    EARLY_REPORT_STEPS,
    ThroughputWindow,
    early_report,
    evaluate,
    evaluate_and_checkpoint,
    log_progress,
)
from lmforge.train.plot import plot_run
from lmforge.train.setup import TrainSetup, accumulation_steps, resolve_vocab, set_up
from lmforge.train.signals import StopSignals
from lmforge.train.step import roll_back, train_step
from lmforge.train.time_budget import BudgetProbe

__all__ = ["TrainResult", "accumulation_steps", "resolve_machine", "resolve_vocab", "train"]


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    losses: dict[int, float] = field(default_factory=dict)
    val_loss: float | None = None
    stopped_by: str | None = None
    """The signal (SIGTERM, SIGINT) that stopped the run early, after a checkpoint."""


def train(
    run: RunConfig,
    resume: bool = False,
    init_from: str | None = None,
    objective: Objective | None = None,
    start_step: int | None = None,
    reset_optimizer: bool = False,
) -> TrainResult:
    """objective: what to train on and for (default: pretraining on run.data). start_step sets
    the step counter (schedule, end) of a resumed or new run; reset_optimizer resumes without the
    optimizer state."""
    if resume and init_from:
        raise ConfigError("--resume and --init_from exclude each other; use one")
    check_run_config(run)  # numbers, device, model shape, out_dir: before data preparation
    check_parallel_config(run.parallel, run.train.dtype)
    check_optimizer_config(run.optim, run.parallel.strategy)
    objective = objective or PretrainObjective()
    with StopSignals() as signals:
        info = init_distributed(
            run.train.device, run.parallel.backend, needs_process_group(run.parallel)
        )
        info = dataclasses.replace(info, tensor_parallel=run.parallel.tensor_parallel)
        try:
            run = resolve_machine(run, info)
            return _train(
                run, info, resume, init_from, objective, start_step, reset_optimizer, signals
            )
        finally:
            objective.close()
            shutdown(info)


def resolve_machine(run: RunConfig, info: DistInfo) -> RunConfig:
    """Threads and precision from this machine (rank 0 decides the dtype for every rank), logged
    as the run's first line; the resolved dtype is what config.toml records."""
    threads = choose_threads()
    precision = decided_by_main(info, lambda: choose_precision(run.train.dtype, info.device))
    check_parallel_config(run.parallel, precision.name, info.world_size)
    if info.is_main:
        tqdm.write(f"machine: {info.device} {precision.name} ({precision.reason}) | {threads}")
        if precision.warning:
            tqdm.write(f"warning: {precision.warning}")
    return dataclasses.replace(run, train=dataclasses.replace(run.train, dtype=precision.name))


def _train(
    run: RunConfig,
    info: DistInfo,
    resume: bool,
    init_from: str | None,
    objective: Objective,
    start_step: int | None,
    reset_optimizer: bool,
    signals: StopSignals,
) -> TrainResult:
    setup, counters = set_up(run, info, resume, init_from, objective, start_step, reset_optimizer)
    cfg = setup.cfg
    result = TrainResult(setup.out_dir, counters.step)
    progress = setup.run.logging.progress_bar and info.is_main
    bar = tqdm(
        total=cfg.max_steps,
        initial=counters.step,
        desc="train",
        disable=not progress,
        dynamic_ncols=True,
    )
    window = ThroughputWindow(torch.zeros((), device=info.device))
    if cfg.eval_at_start and counters.step == 0:
        counters.last_val = evaluate(setup, counters.step)
        setup.early_stopping.update(counters.last_val)
    setup.model.train()
    signals.training = True
    started_at = counters.step
    budget = BudgetProbe(cfg, started_at, setup.train_state)
    while counters.step < cfg.max_steps:
        step_result = train_step(setup, counters, signals)
        if step_result.verdict == ROLLBACK:
            roll_back(setup, counters)
            window.reset()
            bar.reset(total=cfg.max_steps)
            bar.update(counters.step)
            continue
        window.loss_sum += step_result.loss
        counters.step += 1
        counters.tokens_seen += cfg.batch_tokens
        window.tokens += cfg.batch_tokens
        bar.update(1)
        step = counters.step
        if step == started_at + EARLY_REPORT_STEPS and step % cfg.log_interval:
            setup.say(early_report(step, cfg, window.tokens, window.seconds()))
        if budget.after_step(step, info, setup.accumulation, setup.say):
            bar.total = cfg.max_steps
            if info.is_main:
                dump_toml(setup.run, setup.out_dir / "config.toml")
        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            result.losses[step] = log_progress(setup, counters, window, step_result)
        pause_start = time.perf_counter()  # eval and saving are not charged to throughput
        stop, result.stopped_by = evaluate_and_checkpoint(
            setup, counters, step_result.stop_requested, budget.pending, signals
        )
        window.paused += time.perf_counter() - pause_start
        if stop:
            break
    bar.close()
    finish(setup)
    result.step, result.val_loss = counters.step, counters.last_val
    return result


def finish(setup: TrainSetup) -> None:
    if setup.logger is not None:
        setup.logger.close()
        plot_run(setup.out_dir)
