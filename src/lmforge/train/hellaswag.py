"""HellaSwag during training (train.hellaswag_interval): the examples read before training, and
the evaluation at intervals. The one place the loop reaches up into evals/."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lmforge.config import TrainConfig
from lmforge.evals.hellaswag import evaluate_hellaswag, load_hellaswag
from lmforge.parallel.dist import DistInfo, main_first
from lmforge.tokenizer import Tokenizer
from lmforge.train.metrics import MetricsLogger


def load_before_training(cfg: TrainConfig, info: DistInfo) -> list | None:
    """Read (or download) the examples now, so that a bad file fails before training."""
    if cfg.hellaswag_interval <= 0:
        return None
    return main_first(info, lambda: load_hellaswag(cfg.hellaswag_data, cfg.hellaswag_limit))


def run_hellaswag(
    model: nn.Module,
    tokenizer: Tokenizer,
    examples: list,
    cfg: TrainConfig,
    info: DistInfo,
    sharded: bool,
    logger: MetricsLogger | None,
    step: int,
    say: Callable[[str], None],
) -> None:
    """HellaSwag on rank 0 (on every rank with FSDP, whose forward is collective)."""
    if not (info.is_main or sharded):
        return
    # The uncompiled model: every batch has a new shape, which would recompile.
    scores = evaluate_hellaswag(
        model, tokenizer, examples, cfg.micro_batch_size, info.device, cfg.dtype, progress=False
    )
    if logger is not None:
        logger.log(step, {"hellaswag_acc": scores["acc"], "hellaswag_acc_norm": scores["acc_norm"]})
    say(
        f"step {step:>6}/{cfg.max_steps} | hellaswag acc {scores['acc']:.4f} "
        f"acc_norm {scores['acc_norm']:.4f} ({scores['n']} examples)"
    )
