"""The work done every so many steps: progress logs, evaluation, HellaSwag, checkpoints, early
stopping and the checkpoint a stop signal asks for. Time spent here is not charged to throughput.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from lmforge.checkpoint.run_state import save_run_checkpoint
from lmforge.config import TrainConfig, to_dict
from lmforge.parallel.dist import mean_over_ranks
from lmforge.runtime import peak_memory_bytes, synchronize
from lmforge.train.hellaswag import run_hellaswag
from lmforge.train.setup import Counters, TrainSetup
from lmforge.train.signals import StopSignals
from lmforge.train.step import StepResult

EARLY_REPORT_STEPS = 3
"""Throughput and an ETA after this many steps, long before the first log_interval on a slow CPU."""


@dataclass
class ThroughputWindow:
    """Tokens, time and summed step losses since the last progress log."""

    loss_sum: torch.Tensor
    start: float = field(default_factory=time.perf_counter)
    tokens: int = 0
    paused: float = 0.0
    """Seconds spent on evaluation and checkpoints, left out of the throughput."""

    def reset(self) -> None:
        self.start, self.tokens, self.paused = time.perf_counter(), 0, 0.0
        self.loss_sum.zero_()

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused


def early_report(step: int, cfg: TrainConfig, tokens: int, seconds: float) -> str:
    rate = tokens / max(seconds, 1e-9)
    left = (cfg.max_steps - step) * cfg.batch_tokens / rate
    return (
        f"step {step:>6}/{cfg.max_steps} | {rate:,.0f} tok/s over the first steps | "
        f"ETA {int(left // 60)} min {int(left % 60)} s"
    )


def log_progress(
    setup: TrainSetup, counters: Counters, window: ThroughputWindow, result: StepResult
) -> float:
    """The progress line and metrics since the last log (collective); returns the mean loss."""
    s, cfg, info, step = setup, setup.cfg, setup.info, counters.step
    synchronize(s.device)
    elapsed = window.seconds()
    steps_in_window = window.tokens // cfg.batch_tokens
    mean_loss = mean_over_ranks(window.loss_sum / steps_in_window, info).item()
    tokens_per_s = window.tokens / elapsed
    mfu = s.flops_token * tokens_per_s / (s.peak * info.world_size)  # peak is per device
    if mfu > 1:  # a peak measured too low (e.g. a throttled host): no number beats none
        mfu = float("nan")
    metrics = (
        {
            "loss": mean_loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm.item(),
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "tokens": counters.tokens_seen,
            "peak_memory_gib": peak_memory_bytes(s.device) / 2**30,
        }
        | s.health.metrics()
        | s.balancing.metrics(s.model)
        | s.objective.train_metrics(info)
    )
    if s.logger is not None:
        s.logger.log(step, metrics)
    s.say(
        f"step {step:>6}/{cfg.max_steps} | loss {mean_loss:.4f} | lr {result.lr:.2e} | "
        f"grad {metrics['grad_norm']:.3f} | {tokens_per_s:,.0f} tok/s | MFU {100 * mfu:.1f}%"
        + (" (above the measured peak: set train.peak_tflops)" if math.isnan(mfu) else "")
    )
    if not math.isfinite(mean_loss):
        s.say("loss is not finite: lower optim.lr, or use train.dtype='fp32' to debug")
    window.reset()
    return mean_loss


def evaluate(setup: TrainSetup, step: int) -> float:
    """Held-out metrics, logged (collective); returns the val loss."""
    s = setup
    metrics = s.objective.evaluate(
        s.parallel.forward, s.val_loader, s.cfg.eval_batches, s.autocast, s.info
    )
    s.parallel.reshard()
    if s.logger is not None:
        s.logger.log(step, metrics)
    extra = "".join(f" | {k} {v:.4f}" for k, v in metrics.items() if k != "val_loss")
    s.say(f"step {step:>6}/{s.cfg.max_steps} | val loss {metrics['val_loss']:.4f}{extra}")
    return metrics["val_loss"]


def save(setup: TrainSetup, counters: Counters, is_best: bool, budget_pending: bool) -> None:
    """A run checkpoint: weights, sharded optimizer, and the train state to resume from."""
    s, device = setup, setup.device
    summary = {
        "step": counters.step,
        "tokens_seen": counters.tokens_seen,
        "val_loss": counters.last_val,
        # the sharded state's row order (models/row_layouts.py), for consolidate to read safely
        "tensor_parallel": s.run.parallel.tensor_parallel,
    }
    train_state = {
        "scaler": s.scaler.state_dict(),
        "loader": s.train_loader.state_dict(),
        "objective": s.objective.state_dict(s.info),
        "rng": {"torch": torch.get_rng_state()}
        | ({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
        "step": counters.step,
        "best_val_loss": counters.best_val,
        "tokens_seen": counters.tokens_seen,
        "lr_scale": counters.lr_scale,
        "health": s.health.state_dict(),
        "early_stopping": s.early_stopping.state_dict(),
        "world_size": s.info.world_size,
        "budgeted_max_steps": None if budget_pending else s.cfg.max_steps,
        "run_config": to_dict(s.run),
    }
    save_run_checkpoint(
        s.checkpoints,
        counters.step,
        s.parallel,
        s.optimizer,
        s.tokenizer,
        s.run,
        s.info,
        summary,
        train_state,
        is_best,
        write_weights=s.objective.write_weights,
    )


def evaluate_and_checkpoint(
    setup: TrainSetup,
    counters: Counters,
    stop_requested: bool,
    budget_pending: bool,
    signals: StopSignals,
) -> tuple[bool, str | None]:
    """Evaluation, HellaSwag and checkpoint when due after counters.step. Returns whether the
    run stops now (early stopping, or a stop signal after its checkpoint) and the signal."""
    s, cfg, step = setup, setup.cfg, counters.step
    is_eval = step % cfg.eval_interval == 0 or step == cfg.max_steps
    is_checkpoint = step % cfg.checkpoint_interval == 0 or step == cfg.max_steps
    stop_early = False
    if is_eval:
        counters.last_val = evaluate(s, step)
        stop_early = s.early_stopping.update(counters.last_val)
        if stop_early:
            s.say(f"early stop: no better val loss in {cfg.early_stopping_patience} evaluations")
            is_checkpoint = True
    if s.hellaswag and (step % cfg.hellaswag_interval == 0 or step == cfg.max_steps):
        run_hellaswag(
            s.model, s.tokenizer, s.hellaswag, cfg, s.info, s.parallel.fsdp, s.logger, step, s.say
        )
        s.parallel.reshard()
    if is_checkpoint:
        last_val = counters.last_val
        is_best = last_val is not None and last_val < counters.best_val
        if last_val is not None:
            counters.best_val = min(counters.best_val, last_val)
        save(s, counters, is_best, budget_pending)
    if stop_requested:
        if not is_checkpoint:
            save(s, counters, False, budget_pending)
        return True, signals.received or "a signal on another rank"
    return stop_early, None
