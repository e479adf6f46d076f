"""One optimizer step: accumulate micro-batches (gradients synchronised on the last), clip, judge
the loss's health, step; and the rollback a bad verdict can ask for."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from lmforge.checkpoint import directory as ckpt
from lmforge.checkpoint.run_state import reload_weights, rollback_checkpoint
from lmforge.errors import TrainingError
from lmforge.optim.optimizers import lr_at, set_lr
from lmforge.parallel.dist import decided_by_main, sum_over_ranks
from lmforge.parallel.parallelize import clip_gradients
from lmforge.train.health import (
    HEALTH_MESSAGES,
    OK,
    SPIKE,
    STOP,
    first_nonfinite_gradient,
)
from lmforge.train.setup import Counters, TrainSetup
from lmforge.train.signals import StopSignals


@dataclass
class StepResult:
    loss: torch.Tensor
    """This rank's loss, averaged over the micro-batches (detached, on the device)."""
    mean_loss: float
    """The loss averaged over ranks."""
    grad_norm: torch.Tensor
    lr: float
    verdict: str
    """health.py's verdict: OK, SPIKE (stepped), SKIP or ROLLBACK (not stepped)."""
    stop_requested: bool
    """Some rank received a stop signal."""


def train_step(setup: TrainSetup, counters: Counters, signals: StopSignals) -> StepResult:
    """One step at counters.step (which the caller advances); raises TrainingError on STOP."""
    s, cfg = setup, setup.cfg
    lr = counters.lr_scale * lr_at(counters.step, cfg.max_steps, s.run.optim)
    set_lr(s.optimizer, lr)
    step_loss = torch.zeros((), device=s.device)
    for micro in range(s.accumulation):
        batch = s.train_loader.batch_at(0) if cfg.overfit_one_batch else s.train_loader.next()
        with s.parallel.gradient_sync(micro == s.accumulation - 1):
            loss = s.objective.loss(s.parallel.forward, batch, s.autocast)
            extra = s.balancing.extra_loss(s.model)  # e.g. MoE load balancing (already weighted)
            minimised = loss if extra is None else loss + extra
            s.scaler.scale(minimised / s.accumulation).backward()
        step_loss += loss.detach() / s.accumulation
    s.scaler.unscale_(s.optimizer)
    max_norm = s.run.optim.grad_clip if s.run.optim.grad_clip > 0 else float("inf")
    grad_norm = clip_gradients(s.model, max_norm)
    # One collective a step: the loss summed over ranks, and whether any rank was signalled.
    signalled = torch.tensor(float(signals.received is not None), device=s.device)
    status = sum_over_ranks(torch.stack([step_loss.float(), signalled]), s.info).tolist()
    step_mean_loss, stop_requested = status[0] / s.info.world_size, status[1] > 0
    # fp16's GradScaler handles overflowing gradients itself (it skips and rescales).
    verdict = s.health.assess(step_mean_loss, 0.0 if s.scaler.is_enabled() else grad_norm.item())
    if verdict in (OK, SPIKE):
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.balancing.after_step(s.model)  # e.g. MoE router biases (auxiliary-loss-free)
    if verdict != OK:
        s.say(
            f"step {counters.step + 1:>6}/{cfg.max_steps} | loss {step_mean_loss:.4g} | grad "
            f"{grad_norm.item():.4g} | {HEALTH_MESSAGES[verdict]} ({s.health.metrics()})"
        )
    if verdict == STOP:
        raise TrainingError(
            s.health.report(counters.step + 1, first_nonfinite_gradient(s.model), lr)
        )
    s.optimizer.zero_grad(set_to_none=True)
    return StepResult(step_loss, step_mean_loss, grad_norm, lr, verdict, stop_requested)


def roll_back(setup: TrainSetup, counters: Counters) -> None:
    """Back to the newest good checkpoint before this step, with a lower learning rate."""
    s = setup
    directory = decided_by_main(
        s.info, functools.partial(rollback_checkpoint, s.checkpoints, counters.step + 1, s.say)
    )
    restored = s.restore(directory, ckpt.load_train_state(directory))
    counters.step, counters.best_val, counters.tokens_seen, _ = restored
    reload_weights(s.model, directory)
    s.health.rolled_back()
    counters.lr_scale *= s.run.health.rollback_lr_factor
    s.say(f"rolled back to {directory.name}; learning rate now x{counters.lr_scale:g}")
