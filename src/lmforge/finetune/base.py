"""What every finetune objective shares: starting weights, the LoRA switch, the held-out split,
and train metrics accumulated over micro-batches (see train/objective.py for the contract)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from lmforge.checkpoint.adapters import adapter_writer
from lmforge.checkpoint.directory import WeightsWriter
from lmforge.checkpoint.pretrained import load_state
from lmforge.config import FinetuneConfig, FinetuneRunConfig, RunConfig
from lmforge.data.example_loader import ExampleLoader
from lmforge.models.config import ModelConfig
from lmforge.models.lora import apply_lora, trainable_parameters
from lmforge.parallel.dist import DistInfo, sum_over_ranks
from lmforge.tokenizer import Tokenizer

Pretrained = tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]


def split_held_out(items: list, config: FinetuneConfig, held_out: list | None) -> tuple[list, list]:
    """(train, val): val is `held_out` if given, else val_fraction of the items picked by a fixed
    shuffle (the same for every seed); at most val_max_examples of it."""
    if held_out is not None:
        return items, held_out[: config.val_max_examples]
    count = min(config.val_max_examples, max(1, round(len(items) * config.val_fraction)))
    if len(items) < 2:
        return items, items  # nothing to hold out: evaluate on the training example
    picked = set(np.random.default_rng(0).permutation(len(items))[:count].tolist())
    train = [x for i, x in enumerate(items) if i not in picked]
    val = [x for i, x in enumerate(items) if i in picked]
    return train, val


class FinetuneObjective:
    """Subclasses implement prepare, loaders, loss and evaluate."""

    builds_on_meta = False  # transform loads weights and adds adapters to the whole model

    def __init__(
        self, run: FinetuneRunConfig, tokenizer: Tokenizer, start: Pretrained | None = None
    ) -> None:
        self.run, self.config, self.tokenizer = run, run.finetune, tokenizer
        self.start = start  # (config, state, tokenizer) of the starting weights, if any
        self.write_weights: WeightsWriter | None = None
        self.model: nn.Module | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self.count_of: dict[str, str] = {}
        self.say = print

    def starting_weights(self, model: nn.Module) -> None:
        if self.start is not None:
            load_state(model, self.start[1], str(self.config.init_from))

    def after_starting_weights(self, model: nn.Module) -> None:
        """Hook between the starting weights and LoRA (DPO keeps its reference here)."""

    def transform(self, model: nn.Module) -> None:
        self.starting_weights(model)
        self.start = None  # the state dict is in the model now; free it
        self.after_starting_weights(model)
        lora = self.config.lora
        if lora.enabled:
            apply_lora(model, lora)
            self.write_weights = adapter_writer(lora, self.config.init_from)
            total = sum(p.numel() for p in model.parameters())
            trainable = trainable_parameters(model)
            self.say(
                f"LoRA rank {lora.rank} on {', '.join(lora.targets)}: {trainable:,} trainable "
                f"parameters ({100 * trainable / total:.2f}% of {total:,})"
            )
        self.model = model

    def example_loaders(
        self,
        train_rows: list,
        val_rows: list,
        collate: Callable,
        run: RunConfig,
        info: DistInfo,
        device: torch.device,
    ) -> tuple[ExampleLoader, ExampleLoader]:
        """(train, val) loaders over prepared rows: train shuffled and split over the ranks,
        val in order (every rank evaluates the same batches)."""
        cfg = run.train
        options = {"device": device, "collate": collate, "batch_size": cfg.micro_batch_size}
        train_loader = ExampleLoader(
            train_rows, seed=cfg.seed, rank=info.data_rank, world_size=info.data_ranks, name="train",
            **options,
        )  # fmt: skip
        val_loader = ExampleLoader(val_rows, seed=cfg.seed, shuffle=False, name="val", **options)
        return train_loader, val_loader

    def accumulate(self, count_key: str = "count", **values: torch.Tensor) -> None:
        """Add per-micro-batch sums for train_metrics, each to be divided by the sum of the
        values passed under `count_key` (GRPO counts generation batches and loss passes apart)."""
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.count_of[key] = count_key

    def train_metrics(self, info: DistInfo) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        totals = sum_over_ranks(torch.stack([self.sums[k] for k in keys]), info)
        counts = set(self.count_of.values())
        divisor = {k: totals[keys.index(self.count_of[k])].clamp(min=1) for k in keys}
        self.sums, self.count_of = {}, {}
        return {
            k: (v / divisor[k]).item() for k, v in zip(keys, totals, strict=True) if k not in counts
        }

    def state_dict(self, info: DistInfo) -> dict:
        """What a checkpoint must hold beyond the loader (GRPO's kept rollouts); may be
        collective."""
        return {}

    def load_state_dict(self, state: dict, info: DistInfo) -> None:
        pass

    def close(self) -> None:
        pass
