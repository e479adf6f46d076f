"""`finetune grpo` end to end on a tiny random Llama with generated arithmetic prompts: a short
run writes checkpoints and logs the GRPO metrics, a resumed run repeats the uninterrupted one's
losses (sampling seeds come from the checkpointed loader cursor), bad settings fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w
from conftest import rewind
from finetune_fixtures import tiny_base  # noqa: F401

from lmforge.checkpoint.adapters import ADAPTER_FILE
from lmforge.cli import main
from lmforge.config import FinetuneRunConfig, load_run_config
from lmforge.data.arithmetic_task import write_task
from lmforge.finetune.run import finetune

GRPO = {"group_size": 4, "max_new_tokens": 6, "temperature": 1.0, "beta": 0.04}
LORA = {"enabled": True, "rank": 4, "targets": ["attn.qkv", "ffn.down"]}
REWARDS = {"functions": ["number", "length_penalty"], "length_target": 8}
TRAIN = {
    "max_steps": 4, "dtype": "fp32", "device": "cpu", "peak_tflops": 1.0, "log_interval": 1,
    "keep_checkpoints": 5, "seq_len": 128, "micro_batch_size": 2, "batch_tokens": 512,
    "eval_interval": 2, "eval_batches": 1, "checkpoint_interval": 2,
}  # fmt: skip


@pytest.fixture(scope="module")
def arithmetic(tmp_path_factory) -> tuple[Path, Path]:
    train, test = write_task(tmp_path_factory.mktemp("arithmetic"), train=24, test=4, max_value=9)
    return train, test


def grpo_run(
    tmp_path: Path, base: Path, data: tuple[Path, Path], out: str, lora: dict = LORA
) -> FinetuneRunConfig:
    """A seconds-long LoRA GRPO run (fp32 CPU). The random model never answers right, so a
    length penalty gives the groups reward differences to learn from."""
    run = {
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1},
        "train": TRAIN | {"out_dir": str(tmp_path / out)},
        "logging": {"progress_bar": False},
        "finetune": {
            "method": "grpo", "init_from": str(base), "data": str(data[0]),
            "val_data": str(data[1]), "grpo": GRPO, "lora": lora, "rewards": REWARDS,
        },
    }  # fmt: skip
    path = tmp_path / f"{out}.toml"
    path.write_text(tomli_w.dumps(run))
    return load_run_config(str(path), cls=FinetuneRunConfig)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_grpo_run_logs_metrics_and_resumes_exactly(tmp_path, tiny_base, arithmetic):  # noqa: F811
    full = finetune(grpo_run(tmp_path, tiny_base, arithmetic, "full")).out_dir
    assert (full / "checkpoints" / "last" / ADAPTER_FILE).is_file()
    logged = records(full)
    steps = [r for r in logged if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in (
        "reward/number/mean", "reward/total/std", "zero_variance_groups", "kl",
        "clip_fraction", "completion_length", "gen_tokens_per_s", "reward/number/errors",
    ):  # fmt: skip
        assert key in steps[0], key
    assert 1 <= steps[0]["completion_length"] <= GRPO["max_new_tokens"]
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
        ("--finetune.grpo.mu", "2", "finetune.grpo.mu must be 1"),
        ("--finetune.grpo.clip_eps", "-0.1", "finetune.grpo.clip_eps must be in [0, 1)"),
        ("--finetune.grpo.beta", "inf", "finetune.grpo.beta must be >= 0"),
        ("--finetune.rewards.functions", "nope", "finetune.rewards.functions: 'nope'"),
    ],
)
def test_bad_grpo_settings_fail_in_one_line(
    tmp_path,
    tiny_base,  # noqa: F811
    arithmetic,
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
