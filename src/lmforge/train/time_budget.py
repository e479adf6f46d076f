"""`train.time_budget`: fit a run into a wall-clock budget by lowering max_steps, openly.

After the first step (which pays one-time warm-up costs) the next PROBE_STEPS are timed, and
max_steps becomes the number of steps the measured pace finishes within the budget, evaluations
included, capped at the configured max_steps. The decision is logged, written to config.toml and
saved in every checkpoint, so `--resume` continues with the same max_steps (and the same
learning-rate schedule) instead of measuring again: a resumed run stays exact.
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
import time
from collections.abc import Callable

from lmforge.config import TrainConfig
from lmforge.errors import TrainingError
from lmforge.parallel.dist import DistInfo, decided_by_main

PROBE_STEPS = 5
"""Steps timed after the first; their median is the pace, so one step slowed by a busy host
(or a one-time kernel build) does not shrink the whole run."""


def steps_within_budget(
    cfg: TrainConfig, step: int, seconds_per_step: float, elapsed: float, accumulation: int
) -> int:
    """The max_steps that ends near cfg.time_budget seconds after training started, given that
    `step` steps are done after `elapsed` seconds; raises when the budget cannot fit the probe."""
    assert cfg.time_budget is not None
    minimum = (PROBE_STEPS + 1) * seconds_per_step
    if cfg.time_budget < minimum:
        raise TrainingError(
            f"train.time_budget={cfg.time_budget:g} s is too short: measuring the pace alone takes "
            f"{PROBE_STEPS + 1} steps (~{seconds_per_step:.2f} s each here); set "
            f"train.time_budget >= {math.ceil(minimum)} or drop it and set train.max_steps"
        )
    # An evaluation is eval_batches forward passes of one micro-batch; a step is `accumulation`
    # forward+backward passes, about 3x a forward pass each.
    eval_cost = seconds_per_step * cfg.eval_batches / (3 * accumulation)
    per_step = seconds_per_step + eval_cost / cfg.eval_interval
    fit = step + int(max(cfg.time_budget - elapsed - eval_cost, 0.0) / per_step)
    return max(step, min(cfg.max_steps, fit))


class BudgetProbe:
    """Times the probe steps of a run with a time budget and lowers cfg.max_steps after them.

    A resumed run whose checkpoint recorded the decision keeps it and measures nothing."""

    def __init__(self, cfg: TrainConfig, started_at: int, resumed_state: dict | None):
        self.cfg = cfg
        self.pending = cfg.time_budget is not None
        if self.pending and resumed_state is not None and resumed_state.get("budgeted_max_steps"):
            cfg.max_steps, self.pending = resumed_state["budgeted_max_steps"], False
        self.started_at = started_at
        self.train_start = time.perf_counter()
        self.marks: list[float] = []

    def after_step(
        self, step: int, info: DistInfo, accumulation: int, say: Callable[[str], None]
    ) -> bool:
        """Call after each step; True when this step decided (and changed) cfg.max_steps."""
        if not self.pending or step <= self.started_at:
            return False
        self.marks.append(time.perf_counter())  # the end of each step from the first on
        if step == self.started_at + 1 + PROBE_STEPS:
            cfg = self.cfg
            now = self.marks[-1]
            pace = statistics.median(b - a for a, b in itertools.pairwise(self.marks))
            fit = functools.partial(
                steps_within_budget, cfg, step, pace, now - self.train_start, accumulation
            )
            budgeted = decided_by_main(info, fit)  # rank 0's clock decides for every rank
            say(
                f"time_budget {cfg.time_budget:g} s at {pace:.2f} s/step: max_steps "
                f"{cfg.max_steps} -> {budgeted} (recorded in config.toml and checkpoints)"
            )
            cfg.max_steps, self.pending = budgeted, False
            return True
        return False
