"""The options of `lmforge finetune` and `lmforge merge` (the command line's dataclasses). No
torch here, so `lmforge --help` stays fast; the CLI imports the finetuning code when a command
runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import tyro

from lmforge.config import FinetuneRunConfig


@dataclass
class FinetuneCommand:
    """Finetune a model: sft, dpo, distill or grpo, optionally with LoRA (the train loop and its
    flags)."""

    method: tyro.conf.Positional[Literal["sft", "dpo", "distill", "grpo", None]] = None
    """sft, dpo, distill or grpo; default: the config's finetune.method."""
    run: Annotated[FinetuneRunConfig, tyro.conf.arg(name="")] = field(
        default_factory=FinetuneRunConfig
    )
    config: str | None = None
    """TOML run config with a [finetune] section: a path or a shipped name (sft-smollm2, ...)."""
    init_from: str | None = None
    """Starting weights (sets finetune.init_from): checkpoint or run dir, .gguf file or HF dir."""
    resume: bool = False
    """Continue the run in train.out_dir from its last checkpoint, exactly."""
    start_step: int | None = None
    """Set the step counter (learning-rate schedule, train.max_steps) of the resumed or new run."""
    reset_optimizer: bool = False
    """With --resume: restore weights, data position and step, but start a fresh optimizer."""


@dataclass
class MergeCommand:
    """Fold a LoRA run's adapters into its base weights: a full checkpoint for sample/export."""

    checkpoint: tyro.conf.Positional[str]
    """LoRA checkpoint directory, or a LoRA run directory (uses its last checkpoint)."""
    out: str
    """Checkpoint directory to create (must not exist, or be empty)."""
    base: str | None = None
    """Base weights (checkpoint, .gguf or HF dir); default: the path the adapters recorded."""
