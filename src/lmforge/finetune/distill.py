"""Knowledge distillation: the student matches a frozen teacher's softened next-token
distribution (KL at a temperature, scaled by T^2), mixed with the usual cross-entropy, on the
assistant tokens of chat conversations (the SFT data pipeline).

The teacher is any model lmforge can read (checkpoint, GGUF, HF dir); it runs in eval mode,
without gradients, in the training dtype. Student and teacher must share the vocabulary.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from lmforge.checkpoint.pretrained import load_state
from lmforge.config import FinetuneRunConfig
from lmforge.errors import ConfigError
from lmforge.finetune.base import Pretrained
from lmforge.finetune.losses import distill_loss, token_kl
from lmforge.finetune.sft import SFTObjective, forward_logits
from lmforge.formats.gguf import model_from_state
from lmforge.models.config import ModelConfig
from lmforge.tokenizer import Tokenizer
from lmforge.train.objective import Batch, evaluate_batches


def student_config(run: FinetuneRunConfig, teacher: ModelConfig) -> ModelConfig:
    """The teacher's shape with student_layers layers, or the run's [model] (same vocabulary)."""
    layers = run.finetune.student_layers
    if layers > 0:
        if teacher.layers is not None:
            raise ConfigError(
                "finetune.student_layers needs a teacher with uniform layers; describe the "
                "student in [model] instead"
            )
        return dataclasses.replace(teacher, num_layers=layers)
    vocab = run.model.vocab_size
    if vocab is None:
        return dataclasses.replace(run.model, vocab_size=teacher.vocab_size)
    check_vocab(vocab, teacher.vocab_size, "model.vocab_size")
    return run.model


def check_vocab(student: int, teacher: int, what: str) -> None:
    if student != teacher:
        raise ConfigError(
            f"student and teacher vocabularies differ ({what} {student} vs the teacher's "
            f"{teacher}); distillation compares distributions over the same tokens, so use a "
            "student with the teacher's vocabulary"
        )


def spaced_layers(student: int, teacher: int) -> list[int]:
    """Teacher layers to copy: evenly spaced, always the first and the last."""
    if student == 1:
        return [0]
    return [round(i * (teacher - 1) / (student - 1)) for i in range(student)]


def student_state_from_teacher(
    state: dict[str, torch.Tensor], student_layers: int, teacher_layers: int
) -> dict[str, torch.Tensor]:
    picked = spaced_layers(student_layers, teacher_layers)
    out = {k: v for k, v in state.items() if not k.startswith("layers.")}
    for new, old in enumerate(picked):
        prefix = f"layers.{old}."
        out |= {
            f"layers.{new}.{k[len(prefix) :]}": v for k, v in state.items() if k.startswith(prefix)
        }
    return out


class DistillObjective(SFTObjective):
    def __init__(
        self,
        run: FinetuneRunConfig,
        tokenizer: Tokenizer,
        teacher: Pretrained,
        start: Pretrained | None = None,
    ) -> None:
        super().__init__(run, tokenizer, start)
        self.teacher_source = teacher
        self.teacher: nn.Module | None = None

    def starting_weights(self, model: nn.Module) -> None:
        config = self.config
        if self.start is not None:
            super().starting_weights(model)
        elif config.student_layers > 0 and config.student_init == "teacher":
            teacher_config, state, _ = self.teacher_source
            state = student_state_from_teacher(
                state, config.student_layers, teacher_config.num_layers
            )
            load_state(
                model,
                state,
                f"{config.teacher} (layers {spaced_layers(config.student_layers, teacher_config.num_layers)})",
            )
        teacher_config, state, _ = self.teacher_source
        device = next(model.parameters()).device
        self.teacher = model_from_state(teacher_config, state).to(device).requires_grad_(False)
        self.teacher_source = None

    def both_logits(self, forward: nn.Module, batch: Batch, autocast):
        student = forward_logits(forward, batch, autocast)
        with torch.no_grad():
            teacher = forward_logits(self.teacher, batch, autocast)
        return student, teacher

    def loss(self, forward: nn.Module, batch: Batch, autocast) -> torch.Tensor:
        student, teacher = self.both_logits(forward, batch, autocast)
        cfg = self.config
        loss, kl, ce = distill_loss(student, teacher, batch[1], cfg.temperature, cfg.distill_alpha)
        one = torch.ones((), device=loss.device)
        self.accumulate(kl=kl, ce=ce, count=one)
        return loss

    def evaluate(self, forward, loader, batches, autocast, info) -> dict[str, float]:
        cfg = self.config

        def sums(batch: Batch) -> torch.Tensor:
            student, teacher = self.both_logits(forward, batch, autocast)
            mask = (batch[1] != -100).float()
            count = mask.sum()
            loss, _, ce = distill_loss(
                student, teacher, batch[1], cfg.temperature, cfg.distill_alpha
            )
            kl_1 = (token_kl(student, teacher, 1.0) * mask).sum()
            return torch.stack([loss * count, ce * count, kl_1, count])

        batches = min(batches, loader.num_batches)
        loss, ce, kl, count = evaluate_batches(sums, loader, batches, info, forward)
        count = count.clamp(min=1)
        return {
            "val_loss": (loss / count).item(),
            "val_ce": (ce / count).item(),
            "val_kl": (kl / count).item(),
        }
