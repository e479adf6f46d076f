"""Shared pieces of the GRPO run tests: a tiny arithmetic task and seconds-long run configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w

from lmforge.config import FinetuneRunConfig, load_run_config
from lmforge.data.arithmetic_task import write_task

GRPO = {"group_size": 4, "max_new_tokens": 6, "temperature": 1.0, "beta": 0.04}
LORA = {"enabled": True, "rank": 4, "targets": ["attn.qkv", "ffn.down"]}
REWARDS = {"functions": ["number", "length_penalty"], "length_target": 8}
TRAIN = {
    "max_steps": 4, "dtype": "fp32", "device": "cpu", "peak_tflops": 1.0, "log_interval": 1,
    "keep_checkpoints": 5, "seq_len": 128, "micro_batch_size": 2, "batch_tokens": 512,
    "eval_interval": 2, "eval_batches": 1, "checkpoint_interval": 2,
}  # fmt: skip


@pytest.fixture(scope="session")
def arithmetic(tmp_path_factory) -> tuple[Path, Path]:
    train, test = write_task(tmp_path_factory.mktemp("arithmetic"), train=24, test=4, max_value=9)
    return train, test


def grpo_toml(
    tmp_path: Path,
    base: Path,
    data: tuple[Path, Path],
    out: str,
    lora: dict = LORA,
    grpo: dict | None = None,
    train: dict | None = None,
    rewards: dict | None = None,
) -> Path:
    """A seconds-long LoRA GRPO run's config file (fp32 CPU). The random model never answers
    right, so a length penalty gives the groups reward differences to learn from."""
    run = {
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1},
        "train": TRAIN | {"out_dir": str(tmp_path / out)} | (train or {}),
        "logging": {"progress_bar": False},
        "finetune": {
            "method": "grpo", "init_from": str(base), "data": str(data[0]),
            "val_data": str(data[1]), "grpo": GRPO | (grpo or {}), "lora": lora,
            "rewards": rewards or REWARDS,
        },
    }  # fmt: skip
    path = tmp_path / f"{out}.toml"
    path.write_text(tomli_w.dumps(run))
    return path


def grpo_run(tmp_path: Path, base: Path, data: tuple[Path, Path], out: str, **changes):
    path = grpo_toml(tmp_path, base, data, out, **changes)
    return load_run_config(str(path), cls=FinetuneRunConfig)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
