"""`finetune grpo` end to end on a tiny random Llama with generated arithmetic prompts: a short
run writes checkpoints and logs the GRPO metrics, a resumed run repeats the uninterrupted one's
losses (sampling seeds come from the checkpointed loader cursor), bad settings fail in one line."""

from __future__ import annotations

import multiprocessing

import pytest
from conftest import rewind
from finetune_fixtures import tiny_base  # noqa: F401
from grpo_fixtures import GRPO, arithmetic, grpo_run, records  # noqa: F401

from lmforge.checkpoint.adapters import ADAPTER_FILE
from lmforge.cli import main
from lmforge.finetune.run import finetune


def test_grpo_run_logs_metrics_and_resumes_exactly(tmp_path, tiny_base, arithmetic):  # noqa: F811
    full = finetune(grpo_run(tmp_path, tiny_base, arithmetic, "full")).out_dir
    assert (full / "checkpoints" / "last" / ADAPTER_FILE).is_file()
    logged = records(full)
    steps = [r for r in logged if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in (
        "reward/number/mean", "reward/total/std", "zero_variance_groups", "kl",
        "clip_fraction", "completion_length", "gen_tokens_per_s", "reward/number/errors",
        "generation_share", "train_tokens_per_s",
    ):  # fmt: skip
        assert key in steps[0], key
    assert 1 <= steps[0]["completion_length"] <= GRPO["max_new_tokens"]
    assert all(0 < r["generation_share"] < 1 and r["train_tokens_per_s"] > 0 for r in steps)
    assert (full / "reward.png").read_bytes()[:4] == b"\x89PNG"  # the reward curve
    val = [r for r in logged if "val_accuracy" in r]
    assert val and all(r["val_loss"] == pytest.approx(1 - r["val_accuracy"]) for r in val)

    resumed_dir = rewind(full, tmp_path / "resumed", 2)
    finetune(grpo_run(tmp_path, tiny_base, arithmetic, "resumed"), resume=True)
    losses = {r["step"]: r["loss"] for r in records(full) if "loss" in r}
    again = {r["step"]: r["loss"] for r in records(resumed_dir) if "loss" in r}
    assert any(abs(v) > 1e-6 for v in losses.values()), losses  # the groups differed
    assert again == pytest.approx(losses, rel=1e-5, abs=1e-7)


def test_grpo_without_lora_uses_a_frozen_reference(tmp_path, tiny_base, arithmetic):  # noqa: F811
    run = grpo_run(tmp_path, tiny_base, arithmetic, "full-weights", lora={"enabled": False})
    out = finetune(run).out_dir
    steps = [r for r in records(out) if "loss" in r]
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert steps[-1]["kl"] > 0  # and moves away from it
    assert (out / "checkpoints" / "last" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--finetune.grpo.group_size", "1", "finetune.grpo.group_size must be >= 2"),
        ("--finetune.grpo.temperature", "nan", "finetune.grpo.temperature must be > 0"),
        ("--finetune.grpo.mu", "0", "finetune.grpo.mu must be >= 1"),
        ("--finetune.grpo.clip_eps", "-0.1", "finetune.grpo.clip_eps must be in [0, 1)"),
        ("--finetune.grpo.beta", "inf", "finetune.grpo.beta must be >= 0"),
        ("--finetune.rewards.functions", "nope", "finetune.rewards.functions: 'nope'"),
    ],
)
def test_bad_grpo_settings_fail_in_one_line(
    tmp_path,
    tiny_base,  # noqa: F811
    arithmetic,  # noqa: F811
    capsys,
    flag,
    value,
    message,
):
    code = main([
        "finetune", "grpo", "--init_from", str(tiny_base), "--finetune.data", str(arithmetic[0]),
        "--train.out_dir", str(tmp_path / "out"), "--train.device", "cpu", flag, value,
    ])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error, error


def test_the_reward_worker_stops_with_the_run(tmp_path, tiny_base, arithmetic):  # noqa: F811
    # `format` runs in a spawned worker (its regex could backtrack for ever); the run stops it.
    rewards = {"functions": ["number", "format"], "format_regex": ".*[0-9].*"}
    run = grpo_run(
        tmp_path, tiny_base, arithmetic, "worker", rewards=rewards, train={"max_steps": 1}
    )
    assert not multiprocessing.active_children()
    steps = [r for r in records(finetune(run).out_dir) if "loss" in r]
    assert "reward/format/mean" in steps[0]
    assert not multiprocessing.active_children()
