"""The loss-health policy: what a step does when its loss or gradients go bad.

A non-finite loss or gradient norm skips the optimizer step. After `health.max_bad_steps`
such steps in a row the run rolls back to its last checkpoint with the learning rate scaled by
`health.rollback_lr_factor` (at most `health.max_rollbacks` times), or stops with a report.
A loss more than `health.spike_zscore` standard deviations above the mean of the last
`health.spike_window` finite losses is a spike: counted and logged, and skipped if
`health.skip_spikes`. Counters and the window are part of the checkpoint.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import torch
from torch import nn

from lmforge.config import HealthConfig

OK, SPIKE, SKIP, ROLLBACK, STOP = "ok", "spike", "skip", "rollback", "stop"
MIN_HISTORY = 10  # losses needed before a z-score means anything
HEALTH_MESSAGES = {
    SPIKE: "loss spike (step taken)",
    SKIP: "optimizer step skipped",
    ROLLBACK: "rolling back to the last checkpoint",
    STOP: "stopping",
}


class LossHealth:
    def __init__(self, config: HealthConfig):
        self.config = config
        self.window: deque[float] = deque(maxlen=max(config.spike_window, 1))
        self.bad_in_a_row = self.skipped = self.spikes = self.rollbacks = 0

    def assess(self, loss: float, grad_norm: float) -> str:
        """The verdict for one step: ok, spike (step taken), skip, rollback or stop."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.skipped += 1
            self.bad_in_a_row += 1
            if self.bad_in_a_row < self.config.max_bad_steps:
                return SKIP
            rollback = self.config.on_bad_steps == "rollback"
            return ROLLBACK if rollback and self.rollbacks < self.config.max_rollbacks else STOP
        self.bad_in_a_row = 0
        if self.config.spike_window > 0 and self._is_spike(loss):
            self.spikes += 1
            if self.config.skip_spikes:
                self.skipped += 1
                return SKIP
            return SPIKE
        self.window.append(loss)
        return OK

    def _is_spike(self, loss: float) -> bool:
        if len(self.window) < MIN_HISTORY:
            return False
        mean = statistics.fmean(self.window)
        spread = max(statistics.pstdev(self.window), 1e-3 * abs(mean), 1e-8)
        return (loss - mean) / spread > self.config.spike_zscore

    def rolled_back(self) -> None:
        self.rollbacks += 1
        self.bad_in_a_row = 0

    def report(self, step: int, first_bad_gradient: str | None, lr: float) -> str:
        culprit = (
            f"first non-finite gradient: {first_bad_gradient}"
            if first_bad_gradient
            else "the loss itself was not finite (gradients were finite)"
        )
        return (
            f"training stopped at step {step}: {self.bad_in_a_row} steps in a row with a "
            f"non-finite loss or gradient norm ({culprit}; lr {lr:.3g}, {self.rollbacks} "
            "rollbacks); lower optim.lr, raise optim.warmup_steps or use train.dtype='fp32', "
            "then --resume"
        )

    def metrics(self) -> dict[str, int]:
        return {
            "skipped_steps": self.skipped,
            "loss_spikes": self.spikes,
            "rollbacks": self.rollbacks,
        }

    def state_dict(self) -> dict:
        return self.metrics() | {"bad_in_a_row": self.bad_in_a_row, "window": list(self.window)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.spikes = state["skipped_steps"], state["loss_spikes"]
        self.rollbacks, self.bad_in_a_row = state["rollbacks"], state["bad_in_a_row"]
        self.window.clear()
        self.window.extend(state["window"])


def first_nonfinite_gradient(model: nn.Module) -> str | None:
    """The first parameter (in forward order) whose gradient on this rank is not finite."""
    for name, param in model.named_parameters():
        grad = param.grad
        if grad is None:
            continue
        local = grad.to_local() if hasattr(grad, "to_local") else grad
        if not torch.isfinite(local).all():
            return name
    return None
