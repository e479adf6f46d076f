"""Direct Preference Optimization: raise the policy's log-ratio to a frozen reference on the
chosen reply over the rejected one.

The reference is the starting model, frozen: with LoRA it is the same model with its adapters
switched off (no second copy of the weights); without LoRA, a frozen copy made before training.
Its log-probs are computed on the fly, in eval mode and without gradients, for each micro-batch.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from tqdm import tqdm

from lmforge.config import RunConfig
from lmforge.data.chat_records import load_pairs
from lmforge.data.example_loader import pad_rows
from lmforge.data.sft import (
    IGNORE,
    Example,
    Row,
    fit,
    resolve_chat_template,
    shift,
    tokenize_conversation,
)
from lmforge.finetune.base import FinetuneObjective, split_held_out
from lmforge.finetune.losses import dpo_loss, preference_accuracy, sequence_log_probs
from lmforge.finetune.sft import forward_logits, reference_logits
from lmforge.parallel.dist import DistInfo
from lmforge.tokenizer import Tokenizer
from lmforge.train.objective import Batch, evaluate_batches

Pair = tuple[Example, Example]


def collate_pairs(pairs: list[tuple[Row, Row]], pad_id: int) -> Batch:
    """(2B, T) inputs and targets: the B chosen rows, then the B rejected ones (one forward)."""
    rows = [chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs]
    return pad_rows([r.inputs for r in rows], pad_id), pad_rows([r.targets for r in rows], IGNORE)


class DPOObjective(FinetuneObjective):
    reference: nn.Module | None = None

    def prepare(self, run: RunConfig, info: DistInfo, progress: bool) -> Tokenizer:
        self.say = tqdm.write if info.is_main else (lambda message: None)
        config = self.config
        template = resolve_chat_template(self.tokenizer, config.template)

        def tokenize(path: str) -> list[Pair]:
            return [
                tuple(
                    tokenize_conversation(
                        self.tokenizer, messages, template, f"{path} record {i}", last_only=True
                    )
                    for messages in pair
                )
                for i, pair in enumerate(load_pairs(path, config.data_format))
            ]

        val = tokenize(config.val_data) if config.val_data else None
        self.pairs = split_held_out(tokenize(config.data), config, val)
        return self.tokenizer

    def after_starting_weights(self, model: nn.Module) -> None:
        if not self.config.lora.enabled:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    def rows(self, pairs: list[Pair], seq_len: int, split: str) -> list[tuple[Row, Row]]:
        kept = []
        for chosen, rejected in pairs:
            chosen, rejected = fit(chosen, seq_len), fit(rejected, seq_len)
            if chosen is not None and rejected is not None:
                kept.append((shift(chosen), shift(rejected)))
        if len(kept) < len(pairs):
            self.say(
                f"{split}: dropped {len(pairs) - len(kept)} of {len(pairs)} pairs whose reply "
                f"starts after {seq_len} tokens (raise train.seq_len to keep them)"
            )
        return kept

    def loaders(self, run: RunConfig, info: DistInfo, seq_len: int, device: torch.device):
        train, val = self.pairs
        pad = self.tokenizer.eot_id
        train_rows, val_rows = self.rows(train, seq_len, "train"), self.rows(val, seq_len, "val")
        return self.example_loaders(
            train_rows, val_rows, lambda pairs: collate_pairs(pairs, pad), run, info, device
        )

    def reference_log_probs(self, batch: Batch, autocast) -> torch.Tensor:
        logits = reference_logits(self.reference, self.model, batch, autocast)
        return sequence_log_probs(logits, batch[1])

    def pair_terms(self, forward: nn.Module, batch: Batch, autocast):
        """(per-pair losses, reward margins, chosen rewards, rejected rewards, policy log-prob
        accuracy) of a (2B, T) batch."""
        policy = sequence_log_probs(forward_logits(forward, batch, autocast), batch[1])
        reference = self.reference_log_probs(batch, autocast)
        half = policy.shape[0] // 2
        losses, chosen, rejected = dpo_loss(
            policy[:half], policy[half:], reference[:half], reference[half:], self.config.dpo_beta
        )
        logp_wins = preference_accuracy((policy[:half] - policy[half:]).detach())
        return losses, chosen - rejected, chosen, rejected, logp_wins

    def loss(self, forward: nn.Module, batch: Batch, autocast) -> torch.Tensor:
        losses, margins, chosen, rejected, _ = self.pair_terms(forward, batch, autocast)
        self.accumulate(
            reward_margin=margins.sum(),
            pref_accuracy=preference_accuracy(margins).sum(),
            reward_chosen=chosen.sum(),
            reward_rejected=rejected.sum(),
            count=torch.tensor(float(margins.numel()), device=margins.device),
        )
        return losses.mean()

    def evaluate(self, forward, loader, batches, autocast, info) -> dict[str, float]:
        def sums(batch: Batch) -> torch.Tensor:
            losses, margins, _, _, logp_wins = self.pair_terms(forward, batch, autocast)
            accuracy = preference_accuracy(margins)
            count = torch.tensor(float(margins.numel()), device=margins.device)
            return torch.stack(
                [losses.sum(), margins.sum(), accuracy.sum(), logp_wins.sum(), count]
            )

        batches = min(batches, loader.num_batches)
        loss, margin, accuracy, logp_accuracy, count = evaluate_batches(
            sums, loader, batches, info, forward
        )
        return {
            "val_loss": (loss / count).item(),
            "val_reward_margin": (margin / count).item(),
            "val_pref_accuracy": (accuracy / count).item(),
            "val_logp_accuracy": (logp_accuracy / count).item(),
        }
