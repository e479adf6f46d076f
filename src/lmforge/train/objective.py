"""What the training loop trains on and for: an objective.

Pretraining and the finetune methods (SFT, DPO, distillation) share one loop (train/loop.py) and
differ only here: where the data and tokenizer come from, which transform the model gets before
it is parallelised (LoRA), the loss of one micro-batch, and what evaluation reports. The loop
calls exactly these methods; `PretrainObjective` is next-token loss over prepared token shards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from lmforge.checkpoint.directory import WeightsWriter
from lmforge.config import RunConfig
from lmforge.data.loader import BatchLoader
from lmforge.data.prepare import prepare
from lmforge.evals.loss import batch_loss
from lmforge.parallel.dist import DistInfo, main_first, sum_over_ranks
from lmforge.tokenizer import Tokenizer, load_tokenizer

Batch = tuple[torch.Tensor, ...]


class Loader(Protocol):
    """Micro-batches: `next()` for training (rank-aware, resumable), `batch_at(n)` for eval."""

    device: torch.device

    def next(self) -> Batch: ...

    def batch_at(self, number: int) -> Batch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Objective(Protocol):
    write_weights: WeightsWriter | None
    """None: checkpoints hold the full model.safetensors (LoRA writes only the adapters)."""
    builds_on_meta: bool
    """True: the model is built on the meta device and each rank allocates only its share
    (pretraining). False: `transform` needs the whole model first (fine-tuning's starting
    weights, DPO's reference copy, LoRA), so each rank builds it whole before sharding."""

    def prepare(self, run: RunConfig, info: DistInfo, progress: bool) -> Tokenizer:
        """Get the data ready (every rank; rank 0 first where files are written) and return the
        tokenizer, before the model is built."""
        ...

    def transform(self, model: nn.Module) -> None:
        """Change the plain model in place before it is parallelised (starting weights, LoRA)."""
        ...

    def loaders(
        self, run: RunConfig, info: DistInfo, seq_len: int, device: torch.device
    ) -> tuple[Loader, Loader]:
        """(train, val) loaders."""
        ...

    def loss(self, forward: nn.Module, batch: Batch, autocast) -> torch.Tensor:
        """The scalar to minimise for one micro-batch (fp32); may accumulate train metrics."""
        ...

    def train_metrics(self, info: DistInfo) -> dict[str, float]:
        """Extra metrics since the last call, averaged over ranks (collective), then reset."""
        ...

    def evaluate(
        self, forward: nn.Module, loader: Loader, batches: int, autocast, info: DistInfo
    ) -> dict[str, float]:
        """Held-out metrics over val batches 0 .. batches-1 (collective); must hold val_loss."""
        ...

    def state_dict(self, info: DistInfo) -> dict:
        """What a checkpoint must hold beyond the loader and the RNG (GRPO's rollouts kept for
        the steps after a generation batch); every rank calls it (it may be collective), rank 0's
        is saved, and it must be tensors and plain data (train_state.pt is read weights_only)."""
        ...

    def load_state_dict(self, state: dict, info: DistInfo) -> None:
        """Restore `state_dict`'s state on resume and rollback, after the loader's."""
        ...

    def close(self) -> None:
        """Release what the objective started (GRPO's reward worker); the run has ended, or
        failed at any point after `prepare` began."""
        ...


def evaluate_batches(
    metric: Callable[[Batch], torch.Tensor],
    loader: Loader,
    batches: int,
    info: DistInfo,
    model: nn.Module,
) -> torch.Tensor:
    """Sum of `metric` (a tensor per batch) over val batches 0 .. batches-1, split over ranks.

    Every rank runs the same number of forward passes (FSDP gathers weights collectively), so a
    rank with nothing left repeats a batch and does not count it."""
    model.eval()
    total = None
    with torch.no_grad():
        for first in range(0, batches, info.data_ranks):
            number = first + info.data_rank
            value = metric(loader.batch_at(number % batches))
            if total is None:
                total = torch.zeros_like(value)
            if number < batches:
                total += value
    model.train()
    return sum_over_ranks(total, info) / info.tensor_parallel  # a replica's ranks sum it alike


class PretrainObjective:
    """Next-token cross-entropy over prepared token shards (`lmforge train`)."""

    write_weights = None
    builds_on_meta = True

    def prepare(self, run: RunConfig, info: DistInfo, progress: bool) -> Tokenizer:
        self.data_dir = main_first(info, lambda: prepare(run.data, progress=progress))
        return load_tokenizer(self.data_dir)

    def transform(self, model: nn.Module) -> None:
        pass

    def loaders(
        self, run: RunConfig, info: DistInfo, seq_len: int, device: torch.device
    ) -> tuple[BatchLoader, BatchLoader]:
        cfg = run.train
        sampling = {"sampling": run.data.sampling, "document_masking": run.data.document_masking}
        train_loader = BatchLoader(
            self.data_dir,
            "train",
            cfg.micro_batch_size,
            seq_len,
            cfg.seed,
            rank=info.data_rank,
            world_size=info.data_ranks,
            device=device,
            **sampling,
        )
        val_loader = BatchLoader(
            self.data_dir, "val", cfg.micro_batch_size, seq_len, cfg.seed, device=device, **sampling
        )
        return train_loader, val_loader

    def loss(self, forward: nn.Module, batch: Batch, autocast) -> torch.Tensor:
        return batch_loss(forward, batch, autocast)

    def train_metrics(self, info: DistInfo) -> dict[str, float]:
        return {}

    def state_dict(self, info: DistInfo) -> dict:
        return {}

    def load_state_dict(self, state: dict, info: DistInfo) -> None:
        pass

    def close(self) -> None:
        pass

    def evaluate(
        self, forward: nn.Module, loader: Loader, batches: int, autocast, info: DistInfo
    ) -> dict[str, float]:
        total = evaluate_batches(
            lambda batch: batch_loss(forward, batch, autocast), loader, batches, info, forward
        )
        return {"val_loss": (total / batches).item()}
