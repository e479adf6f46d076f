"""Every number and path of a run config checked in one place, before any work starts.

The dataclasses in config.py say what type each field has; this module says which values make
sense: finite, in range, a device that exists, an out_dir that can take a checkpoint. The
RANGES table is the whole policy for numbers, so a reader (or a test) can see every rule at once.
`check_run_config` is called by `train` (and so by `finetune`) before data preparation; the
sampling options of sample/chat/serve have their own shared validator in sampling_validation.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from lmforge._validate import (
    AT_LEAST_ONE,
    BETA,
    FACTOR,
    FRACTION_CLOSED,
    FRACTION_OPEN,
    NON_NEGATIVE,
    POSITIVE,
    Rule,
    check_number,
)
from lmforge.errors import ConfigError
from lmforge.models.counting import build_on_meta, count_parameters
from lmforge.models.ranges import MODEL_RANGES
from lmforge.runtime import check_device

# "section.field": rule. None is always allowed for optional fields (it means "the default").
RANGES: dict[str, Rule] = {
    "optim.lr": NON_NEGATIVE,  # 0 is legitimate: it freezes the weights (e.g. to test a run)
    "optim.min_lr": NON_NEGATIVE,
    "optim.warmup_steps": NON_NEGATIVE,
    "optim.decay_fraction": FRACTION_CLOSED,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.beta1": BETA,
    "optim.beta2": BETA,
    "optim.eps": POSITIVE,
    "optim.grad_clip": NON_NEGATIVE,
    "optim.embedding_lr": POSITIVE,
    "optim.muon_lr": POSITIVE,
    "optim.muon_momentum": BETA,
    "train.max_steps": AT_LEAST_ONE,
    "train.batch_tokens": AT_LEAST_ONE,
    "train.micro_batch_size": AT_LEAST_ONE,
    "train.seq_len": AT_LEAST_ONE,
    "train.seed": NON_NEGATIVE,
    "train.eval_interval": AT_LEAST_ONE,
    "train.eval_batches": AT_LEAST_ONE,
    "train.log_interval": AT_LEAST_ONE,
    "train.checkpoint_interval": AT_LEAST_ONE,
    "train.keep_checkpoints": AT_LEAST_ONE,
    "train.peak_tflops": POSITIVE,
    "train.hellaswag_interval": NON_NEGATIVE,
    "train.hellaswag_limit": AT_LEAST_ONE,
    "train.early_stopping_patience": NON_NEGATIVE,
    "train.time_budget": (lambda v: v > 0, "must be a positive number of seconds"),
    "health.max_bad_steps": AT_LEAST_ONE,
    "health.rollback_lr_factor": FACTOR,
    "health.max_rollbacks": NON_NEGATIVE,
    "health.spike_window": NON_NEGATIVE,
    "health.spike_zscore": POSITIVE,
    "data.vocab_size": AT_LEAST_ONE,
    "data.val_fraction": FRACTION_OPEN,
    "data.shard_tokens": AT_LEAST_ONE,
    "data.workers": NON_NEGATIVE,
    "data.tokenizer_train_chars": AT_LEAST_ONE,
    "finetune.val_fraction": FRACTION_OPEN,
    "finetune.val_max_examples": AT_LEAST_ONE,
    "finetune.dpo_beta": POSITIVE,
    "finetune.temperature": POSITIVE,
    "finetune.distill_alpha": FRACTION_CLOSED,
    "finetune.student_layers": NON_NEGATIVE,
    "finetune.grpo.group_size": (lambda v: v >= 2, "must be >= 2 (advantages compare a group)"),
    "finetune.grpo.max_new_tokens": AT_LEAST_ONE,
    "finetune.grpo.temperature": POSITIVE,  # 0 (greedy) would make every group uniform
    "finetune.grpo.top_p": FACTOR,
    "finetune.grpo.mu": AT_LEAST_ONE,
    "finetune.grpo.clip_eps": BETA,
    "finetune.grpo.clip_eps_high": NON_NEGATIVE,
    "finetune.grpo.beta": NON_NEGATIVE,
    # RewardConfig checks these itself too (reward_config.py); listed so that the table is whole
    "finetune.rewards.length_target": AT_LEAST_ONE,
    "finetune.rewards.time_limit": POSITIVE,
    "finetune.lora.rank": AT_LEAST_ONE,
    "finetune.lora.alpha": POSITIVE,
    "finetune.lora.dropout": BETA,
    "parallel.tensor_parallel": AT_LEAST_ONE,
    # every number of the model config, with the same rules for a model read from a file
    **MODEL_RANGES,
}


def _lookup(config: Any, dotted: str) -> tuple[bool, Any]:
    value = config
    for part in dotted.split("."):
        if not hasattr(value, part):
            return False, None
        value = getattr(value, part)
    return True, value


def check_ranges(config: Any) -> None:
    """Every field of RANGES that `config` has (a RunConfig or FinetuneRunConfig)."""
    for key, rule in RANGES.items():
        present, value = _lookup(config, key)
        if present:
            check_number(key, value, rule)


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_room(
    path: Path, key: str, shown: str, bytes_needed: int, fix: str = "choose another path"
) -> None:
    """`path` exists, or can be made (mkdir -p) in its first existing ancestor, which must be a
    writable directory with `bytes_needed` free."""
    existing = _first_existing(path)
    if not existing.is_dir():
        raise ConfigError(f"{key}={shown} lies under {existing}, which is a file; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={shown}: {existing} is not writable; {fix}")
    free = shutil.disk_usage(existing).free
    if free < bytes_needed:
        raise ConfigError(
            f"{key}={shown}: {existing} has {free / 2**20:.0f} MiB free but one checkpoint "
            f"needs about {bytes_needed / 2**20:.0f} MiB; free disk space or {fix}"
        )


def check_out_dir(
    out_dir: str,
    checkpoint_bytes: int,
    key: str = "train.out_dir",
    fix: str = "choose another path",
) -> None:
    """out_dir is (or can become) a writable directory with room for one checkpoint. Nothing is
    created: a refused run leaves the disk as it was."""
    path = Path(out_dir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={out_dir} is a file, not a directory; {fix}")
    _check_room(path, key, out_dir, checkpoint_bytes, fix)


def check_new_output(out: str | Path, key: str = "--out", is_file: bool = False) -> None:
    """The output of export, convert or merge, before any work: nothing in the way (no file, and
    no directory that holds anything), and a writable directory to stage it beside (they write
    a temporary sibling and rename it into place). Missing parents are fine: they are created."""
    path = Path(out).expanduser().absolute()
    if path.exists() or path.is_symlink():
        if is_file or not path.is_dir():
            raise ConfigError(f"{key}={out} already exists; choose a new path or remove it first")
        if any(path.iterdir()):
            raise ConfigError(
                f"{key}={out} already exists and is not empty; choose a new path or remove it first"
            )
    _check_room(path.parent, key, str(out), 0)


def checkpoint_bytes_estimate(run: Any) -> int:
    """Weights plus two AdamW moments in fp32: what one step checkpoint holds, near enough."""
    model = run.model
    if model.vocab_size is None:  # follows the tokenizer; a byte tokenizer is the smallest
        model = dataclasses.replace(model, vocab_size=256)
    try:
        parameters = count_parameters(build_on_meta(model))
    except (ConfigError, ValueError, RuntimeError):
        return 0  # the model config itself is checked (with a better message) by validate()
    return parameters * 4 * 3


def check_run_config(run: Any) -> None:
    """All numbers, the device and the output directory of a run, before any work."""
    check_ranges(run)
    check_device(run.train.device)
    run.model.validate()
    if run.data.dir is not None and Path(run.data.dir).is_file():
        raise ConfigError(f"data.dir={run.data.dir} is a file, not a directory; choose another")
    check_out_dir(run.train.out_dir, checkpoint_bytes_estimate(run))
