"""`lmforge eval` (hellaswag, loss, lm-eval): the options, and what hellaswag and loss run.
(`eval lm-eval` lives beside its adapter, in lm_eval_command.py.)

The options are plain dataclasses the CLI parses; torch and the evaluators are imported when a
task runs, so that the CLI starts without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Literal, Union

import tyro

from lmforge.evals.lm_eval_command import LmEvalEval, run_lm_eval_command


@dataclass
class HellaswagEval:
    """HellaSwag accuracy (acc, acc_norm) of a checkpoint."""

    checkpoint: str
    """Checkpoint directory, or a run directory (uses its last checkpoint)."""
    data: str | None = None
    """HellaSwag file: the original jsonl or llama.cpp's 6-line text format; default: download
    the validation jsonl once."""
    limit: int | None = None
    """Evaluate only the first N examples."""
    batch_size: int = 8
    """Examples per forward pass (each is 4 rows, one per ending)."""
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 where this machine runs it fast (GPU, AMX CPU), else fp32."""
    device: str = "auto"
    out: str | None = None
    """Write the summary and per-example predictions as JSON here (default: print only)."""


@dataclass
class LossEval:
    """Mean loss of a checkpoint on a split of prepared data."""

    checkpoint: str
    """Checkpoint directory, or a run directory (uses its last checkpoint)."""
    data: str
    """Prepared data directory (from lmforge prepare)."""
    split: str = "val"
    batches: int = 50
    batch_size: int = 8
    seq_len: int | None = None
    """Default: the model's context length."""
    device: str = "auto"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 where this machine runs it fast (GPU, AMX CPU), else fp32."""
    document_masking: bool = False
    """Attend only within each document of a window (as in training with it)."""


@dataclass
class EvalCommand:
    """Evaluate a checkpoint: `eval hellaswag`, `eval loss` (on prepared data) or `eval lm-eval`."""

    task: tyro.conf.OmitSubcommandPrefixes[
        Union[  # noqa: UP007 (tyro names subcommands through Annotated members of a Union)
            Annotated[HellaswagEval, tyro.conf.subcommand("hellaswag")],
            Annotated[LossEval, tyro.conf.subcommand("loss")],
            Annotated[LmEvalEval, tyro.conf.subcommand("lm-eval")],
        ]
    ]


def run_eval_task(task: HellaswagEval | LossEval | LmEvalEval) -> None:
    """Run one `lmforge eval` task and print its result."""
    if isinstance(task, LmEvalEval):
        run_lm_eval_command(task)
    elif isinstance(task, LossEval):
        run_loss(task)
    else:
        run_hellaswag(task)


def run_loss(task: LossEval) -> None:
    from lmforge.evals.loss import evaluate_checkpoint_loss  # torch: only when a task runs

    result = evaluate_checkpoint_loss(
        task.checkpoint, task.data, split=task.split, batches=task.batches,
        batch_size=task.batch_size, seq_len=task.seq_len, device=task.device, dtype=task.dtype,
        document_masking=task.document_masking,
    )  # fmt: skip
    print(
        f"{result['split']} loss {result['loss']:.4f} (perplexity {result['perplexity']:.2f}) "
        f"over {result['tokens']:,} tokens ({result['batches']} x {result['batch_size']} x "
        f"{result['seq_len']}, {result['dtype']})"
    )


def run_hellaswag(task: HellaswagEval) -> None:
    # torch and the checkpoint loader: only when a task runs
    from lmforge.checkpoint.directory import load_model
    from lmforge.evals.hellaswag import evaluate_hellaswag, load_hellaswag
    from lmforge.runtime import pick_device

    examples = load_hellaswag(task.data, task.limit)  # data errors before loading the model
    device = pick_device(task.device)
    model, tokenizer, directory = load_model(task.checkpoint, device)
    result = evaluate_hellaswag(model, tokenizer, examples, task.batch_size, device, task.dtype)
    print(
        f"hellaswag {directory}: acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f} "
        f"on {result['n']} examples ({result['examples_per_s']:.1f} examples/s, {result['dtype']})"
    )
    if task.out:
        result = {"checkpoint": str(directory), "data": task.data} | result
        with open(task.out, "w") as handle:
            json.dump(result, handle, indent=1)
        print(f"wrote {task.out}")
