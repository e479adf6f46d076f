"""`lmforge finetune sft|dpo|distill|grpo`: pick the starting weights, the model config and the
objective, then run the one training loop (train/loop.py) with it."""

from __future__ import annotations

import dataclasses

from lmforge.checkpoint.pretrained import load_pretrained
from lmforge.config import FinetuneRunConfig
from lmforge.config_checks import check_device, check_ranges
from lmforge.errors import ConfigError
from lmforge.finetune.distill import DistillObjective, check_vocab, student_config
from lmforge.finetune.dpo import DPOObjective
from lmforge.finetune.grpo import GRPOObjective
from lmforge.finetune.sft import SFTObjective
from lmforge.train.loop import TrainResult, train
from lmforge.train.objective import Objective


def build_objective(run: FinetuneRunConfig) -> tuple[FinetuneRunConfig, Objective]:
    """The run with its model config settled (the starting weights' or the student's), and the
    objective. Starting weights and teacher are read here, in memory, on every rank."""
    cfg = run.finetune
    if not cfg.data:
        raise ConfigError(
            "finetune.data is not set; give a .json or .jsonl file of records (--finetune.data)"
        )
    start = load_pretrained(cfg.init_from) if cfg.init_from else None
    if cfg.method == "distill":
        if not cfg.teacher:
            raise ConfigError(
                "finetune distill needs a teacher; set finetune.teacher to a checkpoint, .gguf "
                "file or HF dir"
            )
        if cfg.lora.enabled and start is None:
            raise ConfigError(
                "finetune distill with LoRA needs the student's base weights in "
                "finetune.init_from (adapters are merged onto them); or switch LoRA off"
            )
        teacher = load_pretrained(cfg.teacher)
        if start is not None:
            check_vocab(start[0].vocab_size, teacher[0].vocab_size, f"{cfg.init_from}'s vocab")
            model, tokenizer = start[0], start[2]
        else:
            model, tokenizer = student_config(run, teacher[0]), teacher[2]
        check_vocab(tokenizer.vocab_size, teacher[2].vocab_size, "tokenizer size")
        run = dataclasses.replace(run, model=model)
        return run, DistillObjective(run, tokenizer, teacher, start)
    if start is None:
        raise ConfigError(
            f"finetune {cfg.method} needs starting weights; pass --init_from with a checkpoint, "
            ".gguf file or HF dir"
        )
    run = dataclasses.replace(run, model=start[0])
    if cfg.method == "sft":
        return run, SFTObjective(run, start[2], start)
    if cfg.method == "grpo":
        check_grpo(run)
        return run, GRPOObjective(run, start[2], start)
    return run, DPOObjective(run, start[2], start)


def check_grpo(run: FinetuneRunConfig) -> None:
    """What GRPO cannot do yet, refused before any work."""
    run.finetune.rewards.validate()  # command-line overrides set fields without re-checking
    if run.parallel.strategy == "fsdp" or run.parallel.tensor_parallel > 1:
        # Ranks decode different numbers of steps, so FSDP's per-layer gathers would not pair up.
        raise ConfigError(
            "finetune grpo runs with parallel.strategy ddp or zero1 and tensor_parallel 1 (FSDP "
            "and tensor parallelism need lockstep generation, not implemented yet)"
        )


def finetune(
    run: FinetuneRunConfig,
    resume: bool = False,
    start_step: int | None = None,
    reset_optimizer: bool = False,
) -> TrainResult:
    check_ranges(run)  # numbers and device before the starting weights are read
    check_device(run.train.device)
    run, objective = build_objective(run)
    return train(
        run,
        resume=resume,
        objective=objective,
        start_step=start_step,
        reset_optimizer=reset_optimizer,
    )
