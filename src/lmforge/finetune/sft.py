"""Supervised finetuning: next-token loss on the assistant's tokens of chat conversations."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from lmforge.config import RunConfig
from lmforge.data.chat_records import load_conversations
from lmforge.data.example_loader import pad_rows
from lmforge.data.sft import (
    IGNORE,
    Example,
    Row,
    fit,
    pack,
    resolve_chat_template,
    shift,
    tokenize_conversation,
)
from lmforge.finetune.base import FinetuneObjective, split_held_out
from lmforge.finetune.losses import masked_cross_entropy
from lmforge.models.lora import adapters_disabled
from lmforge.parallel.dist import DistInfo
from lmforge.tokenizer import Tokenizer
from lmforge.train.objective import Batch, evaluate_batches


def tokenize_all(
    tokenizer: Tokenizer, conversations: list, template: str, where: str
) -> list[Example]:
    return [
        tokenize_conversation(tokenizer, messages, template, f"{where} record {i}")
        for i, messages in enumerate(conversations)
    ]


def forward_logits(forward: nn.Module, batch: Batch, autocast) -> torch.Tensor:
    inputs, _, *layout = batch
    kwargs = {"document_ids": layout[0], "positions": layout[1]} if layout else {}
    with autocast:
        return forward(inputs, **kwargs)


@torch.no_grad()
def reference_logits(
    reference: nn.Module | None, model: nn.Module, batch: Batch, autocast
) -> torch.Tensor:
    """Logits of the frozen starting model (DPO, GRPO): the copy kept without LoRA, else the
    trained model with its adapters switched off, in eval mode (no dropout in the reference)."""
    if reference is not None:
        return forward_logits(reference, batch, autocast)
    was_training = model.training
    model.eval()
    with adapters_disabled(model):
        logits = forward_logits(model, batch, autocast)
    model.train(was_training)
    return logits


def collate_rows(rows: list[Row], pad_id: int, packed: bool) -> Batch:
    """Unpacked rows are right-padded to the longest in the batch (causal attention never lets
    a real token see the padding after it); packed rows are already seq_len long."""
    inputs = pad_rows([r.inputs for r in rows], pad_id)
    targets = pad_rows([r.targets for r in rows], IGNORE)
    if not packed:
        return inputs, targets
    return (
        inputs,
        targets,
        pad_rows([r.document_ids for r in rows], 0),
        pad_rows([r.positions for r in rows], 0),
    )


class SFTObjective(FinetuneObjective):
    def prepare(self, run: RunConfig, info: DistInfo, progress: bool) -> Tokenizer:
        self.say = tqdm.write if info.is_main else (lambda message: None)
        self.examples = self.read_examples(self.tokenizer)
        return self.tokenizer

    def read_examples(self, tokenizer: Tokenizer) -> tuple[list[Example], list[Example]]:
        config = self.config
        template = resolve_chat_template(tokenizer, config.template)
        train = tokenize_all(
            tokenizer, load_conversations(config.data, config.data_format), template, config.data
        )
        val = None
        if config.val_data:
            conversations = load_conversations(config.val_data, config.data_format)
            val = tokenize_all(tokenizer, conversations, template, config.val_data)
        return split_held_out(train, config, val)

    def rows(self, examples: list[Example], seq_len: int, split: str) -> list[Row]:
        fitted = [f for f in (fit(e, seq_len) for e in examples) if f is not None]
        if len(fitted) < len(examples):
            self.say(
                f"{split}: dropped {len(examples) - len(fitted)} of {len(examples)} examples whose "
                f"reply starts after {seq_len} tokens (raise train.seq_len to keep them)"
            )
        if self.config.packing:
            return pack(fitted, seq_len, self.tokenizer.eot_id)
        return [shift(e) for e in fitted]

    def loaders(self, run: RunConfig, info: DistInfo, seq_len: int, device: torch.device):
        train, val = self.examples
        pad, packed = self.tokenizer.eot_id, self.config.packing

        def collate(rows):
            return collate_rows(rows, pad, packed)

        train_rows, val_rows = self.rows(train, seq_len, "train"), self.rows(val, seq_len, "val")
        return self.example_loaders(train_rows, val_rows, collate, run, info, device)

    def loss(self, forward: nn.Module, batch: Batch, autocast) -> torch.Tensor:
        total, count = masked_cross_entropy(forward_logits(forward, batch, autocast), batch[1])
        return total / count.clamp(min=1)

    def evaluate(self, forward, loader, batches, autocast, info) -> dict[str, float]:
        def sums(batch: Batch) -> torch.Tensor:
            total, count = masked_cross_entropy(forward_logits(forward, batch, autocast), batch[1])
            return torch.stack([total, count.float()])

        batches = min(batches, loader.num_batches)
        total, count = evaluate_batches(sums, loader, batches, info, forward)
        return {"val_loss": (total / count.clamp(min=1)).item()}
