"""The loss-health policy: skip, roll back with a lower learning rate, or stop with a report;
spikes counted. Unit tests of the verdicts and NaNs injected into real training runs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_run

from lmforge.config import HealthConfig
from lmforge.errors import TrainingError
from lmforge.train.health import OK, ROLLBACK, SKIP, SPIKE, STOP, LossHealth
from lmforge.train.loop import train
from lmforge.train.metrics import read_metrics
from lmforge.train.objective import PretrainObjective

NAN = float("nan")


def test_verdicts_for_bad_steps_rollbacks_and_spikes():
    health = LossHealth(HealthConfig(max_bad_steps=2, max_rollbacks=1, spike_zscore=5.0))
    assert [health.assess(2.0 + 0.01 * (i % 3), 1.0) for i in range(12)] == [OK] * 12
    assert health.assess(9.0, 1.0) == SPIKE  # far above the window: counted, step taken
    assert health.assess(2.0, float("inf")) == SKIP
    assert health.assess(NAN, 1.0) == ROLLBACK  # the second bad step in a row
    health.rolled_back()
    assert health.assess(NAN, NAN) == SKIP
    assert health.assess(2.0, 1.0) == OK  # a good step resets the run of bad ones
    assert [health.assess(NAN, 1.0) for _ in range(2)] == [SKIP, STOP]  # rollbacks used up
    assert health.metrics() == {"skipped_steps": 5, "loss_spikes": 1, "rollbacks": 1}
    copy = LossHealth(health.config)
    copy.load_state_dict(health.state_dict())
    assert copy.state_dict() == health.state_dict()
    stopping = LossHealth(HealthConfig(max_bad_steps=1, on_bad_steps="stop"))
    assert stopping.assess(NAN, 1.0) == STOP


def test_spikes_can_be_skipped_and_detection_switched_off():
    skipping = LossHealth(HealthConfig(skip_spikes=True))
    off = LossHealth(HealthConfig(spike_window=0))
    for health in (skipping, off):
        for _ in range(20):
            health.assess(1.0, 1.0)
    assert skipping.assess(50.0, 1.0) == SKIP and skipping.metrics()["loss_spikes"] == 1
    assert off.assess(50.0, 1.0) == OK


def inject_nan(monkeypatch, bad_calls: set[int]) -> None:
    """Make the loss (and so every gradient) NaN on the given training micro-batches (0-based)."""
    calls = iter(range(10**6))
    original = PretrainObjective.loss

    def loss(self, forward, batch, autocast):
        value = original(self, forward, batch, autocast)
        return value * NAN if next(calls) in bad_calls else value

    monkeypatch.setattr(PretrainObjective, "loss", loss)


def health_run(tmp_path, corpus_file, byte_data_dir, **health):
    config = tiny_run(
        tmp_path / "run",
        corpus_file,
        byte_data_dir,
        train={"max_steps": 10, "checkpoint_interval": 4, "eval_interval": 5, "eval_batches": 1},
    )
    for key, value in health.items():
        setattr(config.health, key, value)
    return config


def test_a_transient_nan_skips_one_step_and_the_run_recovers(
    tmp_path, corpus_file, byte_data_dir, monkeypatch
):
    inject_nan(monkeypatch, {5})  # step 6 (one micro-batch a step)
    result = train(health_run(tmp_path, corpus_file, byte_data_dir))
    assert result.step == 10 and math.isnan(result.losses[6])
    assert all(math.isfinite(result.losses[s]) for s in result.losses if s != 6)
    last = read_metrics(tmp_path / "run")[-2]
    assert (last["skipped_steps"], last["rollbacks"]) == (1, 0)
    state = torch.load(
        tmp_path / "run" / "checkpoints" / "last" / "train_state.pt", weights_only=True
    )
    assert state["health"]["skipped_steps"] == 1


def test_persistent_nans_roll_back_to_the_last_checkpoint_with_a_lower_lr(
    tmp_path, corpus_file, byte_data_dir, monkeypatch, capsys
):
    inject_nan(monkeypatch, {5, 6, 7})  # steps 6-8: three bad steps in a row
    result = train(health_run(tmp_path, corpus_file, byte_data_dir))
    assert result.step == 10
    assert "rolled back to step-0000004; learning rate now x0.5" in capsys.readouterr().out
    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    steps = [r["step"] for r in records]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8, 9, 10]  # 5-7 replayed after the rollback
    replayed = {r["step"]: r for r in records[7:]}
    first = {r["step"]: r for r in records[:7]}
    assert replayed[5]["lr"] == pytest.approx(first[5]["lr"] / 2)
    assert replayed[10]["rollbacks"] == 1 and replayed[10]["skipped_steps"] == 3
    assert all(math.isfinite(r["loss"]) for r in records[7:])


def test_stop_policy_ends_the_run_with_a_report(tmp_path, corpus_file, byte_data_dir, monkeypatch):
    inject_nan(monkeypatch, set(range(5, 100)))
    config = health_run(tmp_path, corpus_file, byte_data_dir, on_bad_steps="stop", max_bad_steps=2)
    with pytest.raises(TrainingError) as error:
        train(config)
    message = str(error.value)
    assert message.startswith("training stopped at step 7: 2 steps in a row")
    assert "first non-finite gradient: token_embedding.weight" in message
    assert (tmp_path / "run" / "checkpoints" / "step-0000004").is_dir()  # kept for a resume


def test_rollback_without_any_checkpoint_stops(tmp_path, corpus_file, byte_data_dir, monkeypatch):
    inject_nan(monkeypatch, set(range(100)))
    with pytest.raises(TrainingError, match="no checkpoint to roll back to"):
        train(health_run(tmp_path, corpus_file, byte_data_dir))
