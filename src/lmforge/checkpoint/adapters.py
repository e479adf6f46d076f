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

import safetensors
import safetensors.torch
import torch
from torch import nn

from lmforge._validate import check_number, from_dict
from lmforge.checkpoint.directory import ADAPTER_CONFIG, ADAPTER_FILE, WeightsWriter
from lmforge.config import LoraConfig
from lmforge.config_checks import RANGES
from lmforge.errors import CheckpointError, ConfigError, one_line
from lmforge.json_files import read_json_object
from lmforge.models.lora import adapter_state
from lmforge.models.ranges import FILE_FIX


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
    """The LoRA settings of an adapter checkpoint, held to the run config's rules for them
    (finetune.lora.* in config_checks.RANGES), and the path of the base weights."""
    path = Path(directory) / ADAPTER_CONFIG
    payload = read_json_object(path)
    base = payload.pop("base", None)
    payload.pop("enabled", None)
    try:
        config = from_dict(LoraConfig, payload, str(path), "lora.")
    except ConfigError as error:  # LoraConfig's own checks do not know the file
        message = str(error)
        raise ConfigError(message if str(path) in message else f"{path}: {message}") from None
    for key in ("rank", "alpha", "dropout"):
        rule = RANGES[f"finetune.lora.{key}"]
        check_number(f"{path}: lora.{key}", getattr(config, key), rule, FILE_FIX)
    if base is not None and not isinstance(base, str):
        raise CheckpointError(f"{path}: base must be a path, got {base!r}; {FILE_FIX}")
    return config, base


@torch.no_grad()
def load_adapter_weights(model: nn.Module, directory: Path) -> None:
    """Adapters of a checkpoint into a model that already carries adapters of the same shape."""
    path = Path(directory) / ADAPTER_FILE
    if not path.is_file():
        raise CheckpointError(f"LoRA checkpoint {directory} lacks {ADAPTER_FILE}; it is incomplete")
    try:
        saved = safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({one_line(error, 200)}); it is "
            "truncated or corrupt: use another checkpoint of the run"
        ) from None
    own = adapter_state(model)
    if sorted(saved) != sorted(own) or any(saved[k].shape != own[k].shape for k in own):
        raise CheckpointError(
            f"the adapters in {directory} do not fit this run's LoRA settings (rank or targets "
            "changed); resume with the run's own finetune.lora settings"
        )
    state = dict(model.named_parameters())
    for key, value in saved.items():
        state[key].copy_(value)
