"""Held-out loss and perplexity of any checkpoint on a prepared dataset (`lmforge eval loss`).

The per-batch loss here is shared with the training loop's periodic evaluation, so a checkpoint's
eval loss equals the val loss the run logged when the loader settings match.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.checkpoint.directory import load_model
from lmforge.data.loader import BatchLoader
from lmforge.data.prepare import read_index
from lmforge.errors import DataError
from lmforge.runtime import autocast_context, choose_precision, pick_device


def batch_loss(model: nn.Module, batch: tuple[torch.Tensor, ...], autocast) -> torch.Tensor:
    """Mean next-token cross-entropy of one loader batch (fp32 loss, any autocast forward)."""
    inputs, targets, *layout = batch
    kwargs = {}
    if layout:  # document masking: per-document attention and positions
        kwargs = {"document_ids": layout[0], "positions": layout[1]}
    with autocast:
        logits = model(inputs, **kwargs)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


@torch.no_grad()
def mean_loss(model: nn.Module, loader: BatchLoader, batches: int, autocast) -> float:
    """Mean loss over batches 0 .. batches-1 (the same ones every call: they depend on the seed)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=loader.device)
    for number in range(batches):
        total += batch_loss(model, loader.batch_at(number), autocast)
    model.train(was_training)
    return (total / batches).item()


def evaluate_checkpoint_loss(
    checkpoint: str,
    data_dir: str,
    split: str = "val",
    batches: int = 50,
    batch_size: int = 8,
    seq_len: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    document_masking: bool = False,
) -> dict:
    """Loss of a checkpoint over an in-order pass of a split; never counts a window twice."""
    torch_device = pick_device(device)
    model, tokenizer, directory = load_model(checkpoint, torch_device)
    index = read_index(Path(data_dir))
    data_kind, data_vocab = index.get("tokenizer"), index.get("vocab_size")
    if (data_kind, data_vocab) != (tokenizer.kind, tokenizer.vocab_size):
        raise DataError(
            f"{data_dir} was tokenized with {data_kind} ({data_vocab} tokens) but checkpoint "
            f"{directory} uses {tokenizer.kind} ({tokenizer.vocab_size} tokens); prepare the data "
            "with the checkpoint's tokenizer"
        )
    if split not in index["splits"]:
        raise DataError(
            f"{data_dir} has no split {split!r}; use one of {', '.join(index['splits'])}"
        )
    seq_len = seq_len or model.config.context_length

    def sequential(rows: int) -> BatchLoader:
        return BatchLoader(
            data_dir,
            split,
            rows,
            seq_len,
            seed=0,
            device=torch_device,
            sampling="sequential",
            document_masking=document_masking,
        )

    loader = sequential(batch_size)
    # A small split holds fewer windows than asked for; wrapping around would count tokens twice.
    if loader.windows_per_epoch < batch_size:
        batch_size = loader.windows_per_epoch
        loader = sequential(batch_size)
    batches = max(1, min(batches, loader.windows_per_epoch // batch_size))
    precision = choose_precision(dtype, torch_device)
    loss = mean_loss(model, loader, batches, autocast_context(torch_device, precision.name))
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "tokens": batches * batch_size * seq_len,
        "split": split,
        "batches": batches,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "dtype": precision.name,
        "checkpoint": str(directory),
    }
