"""`lmforge eval lm-eval`: parse the command's task data, run lm-eval, print and save results.

Kept apart from lm_eval_adapter.py so that a missing lm-eval is one line naming the extra.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from lmforge.errors import LmforgeError


@dataclass
class LmEvalEval:
    """EleutherAI lm-evaluation-harness tasks on a checkpoint, in-process (extra lmforge[eval])."""

    checkpoint: str
    """Checkpoint or run directory, .gguf file or HF model directory."""
    tasks: tuple[str, ...]
    """lm-eval task names: the shipped offline lmforge_hellaswag, lmforge_wikitext2, or tasks
    from --include_path."""
    data: tuple[str, ...] = ()
    """Local data per shipped task, as TASK=PATH (default: files under $LMFORGE_SHARED_DATA)."""
    include_path: tuple[str, ...] = ()
    """Directories of further lm-eval task configs (YAML), e.g. pointing at local json/parquet."""
    limit: int | None = None
    """Evaluate only the first N documents of each task."""
    num_fewshot: int | None = None
    batch_size: int = 16
    device: str = "auto"
    dtype: Literal["fp32", "bf16"] = "fp32"
    out: str | None = None
    """Write lm-eval's results (and per-document samples) as JSON here."""


def run_lm_eval_command(task: LmEvalEval) -> None:
    data = {}
    for item in task.data:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise LmforgeError(f"--data {item!r} is not TASK=PATH, e.g. lmforge_hellaswag=val.txt")
        data[name] = path
    try:
        from lmforge.evals.lm_eval_adapter import run_lm_eval
    except ImportError as error:
        raise LmforgeError(
            f"eval lm-eval needs lm-evaluation-harness ({error.name} is missing); "
            "install it with: pip install 'lmforge[eval]'"
        ) from None
    results = run_lm_eval(
        task.checkpoint, list(task.tasks), limit=task.limit, data_files=data,
        include_path=list(task.include_path), batch_size=task.batch_size, device=task.device,
        dtype=task.dtype, num_fewshot=task.num_fewshot, log_samples=task.out is not None,
    )  # fmt: skip
    for name, metrics in results["results"].items():
        shown = ", ".join(
            f"{key.split(',')[0]} {value:.4f}"
            for key, value in metrics.items()
            if isinstance(value, float) and "stderr" not in key
        )
        print(f"{name}: {shown} ({metrics.get('sample_len', '?')} documents)")
    if task.out:
        with open(task.out, "w") as handle:
            json.dump(results, handle, indent=1, default=str)
        print(f"wrote {task.out}")
