"""`lmforge merge`: fold a LoRA run's adapters into its base weights, as a full checkpoint that
sample, chat, eval and export take."""

from __future__ import annotations

from pathlib import Path

from lmforge.checkpoint import directory as ckpt
from lmforge.checkpoint.adapters import (
    ADAPTER_CONFIG,
    load_adapter_weights,
    read_adapter_config,
)
from lmforge.checkpoint.directory import check_out_dir
from lmforge.checkpoint.pretrained import load_pretrained, load_state
from lmforge.errors import CheckpointError
from lmforge.json_files import read_json_object
from lmforge.models.footprint import refuse_if_too_large
from lmforge.models.lora import apply_lora, merge_lora
from lmforge.models.transformer import Transformer
from lmforge.tokenizer import load_tokenizer


def merge_checkpoint(path: str | Path, out: str | Path, base: str | None = None) -> Path:
    """A full checkpoint at `out`: the base weights with the adapters of `path` folded in."""
    out = Path(out)
    check_out_dir(out)
    directory = _find_adapter_checkpoint(Path(path))
    lora, recorded = read_adapter_config(directory)
    base = base or recorded
    if base is None:
        raise CheckpointError(
            f"{directory} does not record its base weights; pass --base CHECKPOINT|GGUF|HF_DIR"
        )
    if not Path(base).expanduser().exists():
        raise CheckpointError(
            f"the base weights {base} of {directory} are gone; pass --base with their new path"
        )
    config = ckpt.read_model_config(directory)
    # the base's state dict and the model it goes into are both in memory while merging
    refuse_if_too_large(config, str(directory), bytes_per_param=8)
    _, state, _ = load_pretrained(base)
    model = Transformer(config)
    load_state(model, state, str(base))
    apply_lora(model, lora)
    load_adapter_weights(model, directory)
    merge_lora(model)
    info = read_json_object(directory / ckpt.INFO_FILE, default={})
    info |= {"merged_from": str(directory.resolve()), "base": str(base)}
    return ckpt.save_checkpoint(out, model.eval(), load_tokenizer(directory), info)


def _find_adapter_checkpoint(path: Path) -> Path:
    for candidate in (path, path / "checkpoints" / "last", path / "last"):
        if ckpt.is_adapter_checkpoint(candidate):
            return candidate.resolve()
    raise CheckpointError(
        f"{path} holds no LoRA adapter checkpoint ({ADAPTER_CONFIG}); point at a LoRA run "
        "directory or one of its checkpoints"
    )
