"""Weights to start from (or to distill from): an lmforge checkpoint or run dir, a GGUF file or a
Hugging Face model dir, read in memory through the interop loaders (no conversion on disk)."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn

from lmforge.checkpoint import directory as ckpt
from lmforge.checkpoint.detect import detect_format
from lmforge.errors import CheckpointError, one_line
from lmforge.formats.gguf import read_gguf
from lmforge.formats.hf_config import model_config_from_hf
from lmforge.formats.hf_tokenizer import load_hf_dir_tokenizer, read_json
from lmforge.formats.hf_weights import read_hf_weights, state_dict_from_hf
from lmforge.formats.weight_source import (
    SafetensorsSource,
    StateDictSource,
    hf_source,
    safetensors_file_source,
)
from lmforge.models.config import ModelConfig
from lmforge.models.footprint import refuse_if_too_large
from lmforge.tokenizer import Tokenizer, load_tokenizer


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and any(
        (candidate / ckpt.CONFIG_FILE).is_file() and (candidate / ckpt.DESCRIPTOR).is_file()
        for candidate in (path, path / "checkpoints" / "last", path / "last")
    )


def _checkpoint(path: Path) -> tuple[Path, ModelConfig]:
    """The checkpoint directory of a run or checkpoint path, verified, and its model config."""
    ckpt.refuse_adapter_checkpoint(path)
    directory = ckpt.find_checkpoint(path)
    ckpt.verify_checkpoint(directory, required=False)
    return directory, ckpt.read_model_config(directory)


def _meta_refusal(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is a Meta checkpoint; run `lmforge convert {path} --out DIR` and start from DIR"
    )


def load_pretrained(path: str | Path) -> tuple[ModelConfig, dict[str, Tensor], Tokenizer]:
    """(model config, fp32 state dict, tokenizer) of a checkpoint, GGUF file or HF dir."""
    path = Path(path).expanduser()
    if _is_checkpoint(path):
        directory, config = _checkpoint(path)
        refuse_if_too_large(config, str(directory))  # the config first, then the weights
        try:
            state = safetensors.torch.load_file(str(directory / ckpt.MODEL_FILE))
        except (safetensors.SafetensorError, OSError) as error:
            raise CheckpointError(
                f"{directory / ckpt.MODEL_FILE} is not a readable safetensors file "
                f"({one_line(error, 200)}); use another checkpoint"
            ) from None
        return config, state, load_tokenizer(directory)
    kind = detect_format(path)
    if kind == "gguf":
        return read_gguf(path)
    if kind == "hf":
        hf_config = read_json(path / "config.json")
        config = model_config_from_hf(hf_config, str(path / "config.json"))
        refuse_if_too_large(config, str(path))
        weights = read_hf_weights(path)
        state = state_dict_from_hf(
            weights, config, hf_config["model_type"], hf_config.get("rope_interleave")
        )
        return config, state, load_hf_dir_tokenizer(path, hf_config)
    raise _meta_refusal(path)


def open_weights(path: str | Path) -> tuple[ModelConfig, SafetensorsSource | StateDictSource]:
    """(model config, a source that reads the weights a slice at a time) of a checkpoint, HF dir
    or GGUF file: what sharded loading (parallel/materialize.py load_local) reads from. The
    checkpoint and safetensors HF dirs are read lazily; GGUF is dequantized in memory."""
    path = Path(path).expanduser()
    if _is_checkpoint(path):
        directory, config = _checkpoint(path)
        return config, safetensors_file_source(directory / ckpt.MODEL_FILE)
    kind = detect_format(path)
    if kind == "gguf":
        config, state, _ = read_gguf(path)
        return config, StateDictSource(state)
    if kind == "hf":
        hf_config = read_json(path / "config.json")
        config = model_config_from_hf(hf_config, str(path / "config.json"))
        return config, hf_source(path, hf_config, config)
    raise _meta_refusal(path)


@torch.no_grad()
def load_state(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Copy `state` into `model` (a plain, not yet adapted Transformer), checking every name and
    shape; tied weights may be stored once."""
    own = model.state_dict()
    tied = {"lm_head.weight", "token_embedding.weight"} if model.config.tie_embeddings else set()
    missing = [k for k in own if k not in state and k not in tied]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        key = (wrong or missing or unexpected)[0]
        raise CheckpointError(
            f"{source} does not fit this model ({key}); its model config must be the run's "
            f"(missing {len(missing)}, unexpected {len(unexpected)}, wrong shape {len(wrong)})"
        )
    for key, value in state.items():
        own[key].copy_(value)
