"""`train.time_budget`: fit a run into a wall-clock budget by lowering max_steps, openly.

After the first step (which pays one-time warm-up costs) the next PROBE_STEPS are timed, and
max_steps becomes the number of steps the measured pace finishes within the budget, evaluations
included, capped at the configured max_steps. The decision is logged, written to config.toml and
saved in every checkpoint, so `--resume` continues with the same max_steps (and the same
learning-rate schedule) instead of measuring again: a resumed run stays exact.
"""

from __future__ import annotations

import math

from lmforge.config import TrainConfig
from lmforge.errors import TrainingError

PROBE_STEPS = 3


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
