"""Adapter-only checkpoints of LoRA runs, and merging them back into a full checkpoint.

A LoRA run's checkpoint is the usual directory (config.json of the base model, tokenizer,
train state, optimizer state of the adapters) with the adapters in place of model.safetensors:
    adapter_model.safetensors   lora_a / lora_b of every adapted layer
    adapter_config.json         rank, alpha, dropout, targets and the base weights' path
`lmforge merge CHECKPOINT --out DIR` (finetune/merge.py) folds the adapters into the base and
writes a full, self-contained checkpoint that sample, chat, eval and export take.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from lmforge._validate import from_dict
from lmforge.checkpoint.directory import ADAPTER_CONFIG, ADAPTER_FILE, WeightsWriter
from lmforge.config import LoraConfig
from lmforge.errors import CheckpointError
from lmforge.json_files import read_json_object
from lmforge.models.lora import adapter_state


def adapter_writer(config: LoraConfig, base: str | None) -> WeightsWriter:
    """Writes the adapters and their config into a staged checkpoint directory."""
    payload = dataclasses.asdict(config) | {
        "base": str(Path(base).expanduser().resolve()) if base else None
    }

    def write(staging: Path, weights: nn.Module | dict[str, torch.Tensor]) -> None:
        tensors = {k: v.contiguous() for k, v in adapter_state(weights).items()}
        safetensors.torch.save_file(tensors, str(staging / ADAPTER_FILE))
        (staging / ADAPTER_CONFIG).write_text(json.dumps(payload, indent=2))

    return write


def read_adapter_config(directory: Path) -> tuple[LoraConfig, str | None]:
    payload = read_json_object(Path(directory) / ADAPTER_CONFIG)
    base = payload.pop("base", None)
    payload.pop("enabled", None)
    return from_dict(LoraConfig, payload, str(directory / ADAPTER_CONFIG), "lora."), base


@torch.no_grad()
def load_adapter_weights(model: nn.Module, directory: Path) -> None:
    """Adapters of a checkpoint into a model that already carries adapters of the same shape."""
    path = Path(directory) / ADAPTER_FILE
    if not path.is_file():
        raise CheckpointError(f"LoRA checkpoint {directory} lacks {ADAPTER_FILE}; it is incomplete")
    saved = safetensors.torch.load_file(str(path))
    own = adapter_state(model)
    if sorted(saved) != sorted(own) or any(saved[k].shape != own[k].shape for k in own):
        raise CheckpointError(
            f"the adapters in {directory} do not fit this run's LoRA settings (rank or targets "
            "changed); resume with the run's own finetune.lora settings"
        )
    state = dict(model.named_parameters())
    for key, value in saved.items():
        state[key].copy_(value)
