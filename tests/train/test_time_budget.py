"""train.time_budget: max_steps fitted to the measured pace, recorded, and kept on resume."""

from __future__ import annotations

import shutil

import pytest
import tomllib
from conftest import tiny_run

from lmforge.config import TrainConfig
from lmforge.errors import ConfigError, TrainingError
from lmforge.train import time_budget
from lmforge.train.loop import train
from lmforge.train.time_budget import PROBE_STEPS, steps_within_budget


def test_steps_fill_the_budget_with_evaluations_counted():
    cfg = TrainConfig(max_steps=1000, time_budget=100.0, eval_interval=10, eval_batches=3)
    # 1 s a step, 4 steps done in 5 s; an evaluation costs 3 forward passes = 1 s at accumulation 1.
    steps = steps_within_budget(cfg, 4, 1.0, 5.0, 1)
    assert steps == 4 + int((100 - 5 - 1) / (1 + 1 / 10))
    assert steps_within_budget(cfg, 4, 0.001, 5.0, 1) == 1000  # never above max_steps
    assert steps_within_budget(cfg, 4, 1.0, 200.0, 1) == 4  # already over: stop where it is


def test_a_budget_shorter_than_the_probe_names_the_minimum():
    cfg = TrainConfig(time_budget=2.0)
    with pytest.raises(TrainingError, match=rf"time_budget >= {PROBE_STEPS + 1}\b"):
        steps_within_budget(cfg, PROBE_STEPS + 1, 1.0, 4.0, 1)


@pytest.mark.parametrize("budget", [0, -5, float("nan"), float("inf")])
def test_a_budget_that_is_not_a_positive_number_is_refused(
    tmp_path, corpus_file, byte_data_dir, budget
):
    run = tiny_run(tmp_path / "run", corpus_file, byte_data_dir, train={"time_budget": budget})
    with pytest.raises(ConfigError, match="time_budget must be a positive number"):
        train(run)
    assert not (tmp_path / "run").exists()


def test_budgeted_steps_are_recorded_and_kept_by_resume(
    tmp_path, corpus_file, byte_data_dir, monkeypatch
):
    real = time_budget.steps_within_budget

    def at_a_fixed_pace(cfg, step, pace, elapsed, accumulation):
        return real(cfg, step, 1.0, float(step), accumulation)  # as if 1 s a step

    monkeypatch.setattr(time_budget, "steps_within_budget", at_a_fixed_pace)
    settings = {"max_steps": 50, "time_budget": 12.0, "checkpoint_interval": 6, "eval_interval": 6}
    out = tmp_path / "run"
    first = train(tiny_run(out, corpus_file, byte_data_dir, train=settings | {"max_steps": 50}))
    # 6 steps in 6 s, then (12 - 6 - 1/3) / (1 + 1/3 / 6) more: an evaluation is one forward
    # pass, a third of a step.
    assert first.step == 11
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["train"]["max_steps"] == 11 and config["train"]["time_budget"] == 12.0

    # Resume from the step-6 checkpoint: the recorded decision holds, nothing is re-measured.
    (out / "checkpoints" / "last").unlink()
    (out / "checkpoints" / "last").symlink_to("step-0000006")
    shutil.rmtree(out / "checkpoints" / "step-0000011")
    monkeypatch.setattr(
        time_budget, "steps_within_budget", lambda *a: pytest.fail("measured again")
    )
    resumed = train(tiny_run(out, corpus_file, byte_data_dir, train=settings), resume=True)
    assert resumed.step == 11 and resumed.losses.keys() == set(range(7, 12))
    assert resumed.losses[11] == first.losses[11]  # and the resumed run is the same run
