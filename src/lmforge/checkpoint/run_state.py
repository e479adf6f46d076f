"""Saving and resuming a training run, at any number of ranks.

A run checkpoint is the portable checkpoint directory (config, model.safetensors, tokenizer),
plus train_state.pt (step, loader cursor, RNG, run config; written by rank 0) and the
sharded_state/ directory (optimizer state, and FSDP's model shards; written by every rank).
Resume reads both back at whatever world size and strategy the new run uses.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from lmforge.checkpoint import directory as ckpt
from lmforge.checkpoint.adapters import load_adapter_weights
from lmforge.checkpoint.directory import WeightsWriter
from lmforge.checkpoint.stream_weights import (
    SafetensorsStream,
    stream_sharded_weights,
    weight_entries,
)
from lmforge.config import RunConfig
from lmforge.config_checks import check_out_dir
from lmforge.errors import CheckpointError, ConfigError, TrainingError
from lmforge.json_files import read_json_object
from lmforge.models.footprint import weights_bytes
from lmforge.models.row_layouts import plain_rows, tensor_parallel_rows
from lmforge.models.transformer import Transformer
from lmforge.optim.optimizers import MuonAdamW
from lmforge.parallel.dist import DistInfo, barrier
from lmforge.parallel.parallelize import ParallelModel
from lmforge.parallel.safe_load import one_line
from lmforge.parallel.sharded_state import (
    SHARDED_DIR,
    full_model_state,
    holds_model,
    load_model_tensor,
    load_sharded_state,
    save_sharded_state,
)
from lmforge.tokenizer import Tokenizer


def step_checkpoints(checkpoints: Path) -> list[Path]:
    """Finished step checkpoints (not staging directories), newest first."""
    found = [p for p in checkpoints.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")]
    return sorted(found, reverse=True)


def latest_intact_checkpoint(checkpoints: Path, warn: Callable[[str], None]) -> Path:
    """The newest checkpoint that passes its manifest and can be resumed; a corrupt or
    incomplete newer one is skipped with a warning (it is left on disk for inspection)."""
    for candidate in step_checkpoints(checkpoints):
        try:
            ckpt.verify_checkpoint(candidate)
            if not (candidate / ckpt.STATE_FILE).is_file():
                raise CheckpointError(f"{candidate} has no {ckpt.STATE_FILE}")
            return candidate
        except CheckpointError as error:
            warn(f"warning: not resuming from {candidate.name}: {error}")
    raise CheckpointError(
        f"--resume: {checkpoints} holds no intact checkpoint; start without --resume "
        "in a new train.out_dir"
    )


def rollback_checkpoint(checkpoints: Path, step: int, warn: Callable[[str], None]) -> Path:
    """Where the loss-health policy rolls back to: the newest intact checkpoint."""
    if not (checkpoints.is_dir() and step_checkpoints(checkpoints)):
        raise TrainingError(
            f"training stopped at step {step}: the loss stayed non-finite and there is no "
            "checkpoint to roll back to yet; lower optim.lr or raise optim.warmup_steps"
        )
    return latest_intact_checkpoint(checkpoints, warn)


def reload_weights(model: nn.Module, directory: Path) -> None:
    """Rollback: the checkpoint's weights into the training model (in place, so also under DDP
    and ZeRO-1): model.safetensors, or a LoRA checkpoint's adapters; FSDP's sharded model was
    loaded by `restore_sharded` already."""
    weights_before_parallelize(model, directory)


def check_resumable(run: RunConfig, directory: Path, reset_optimizer: bool = False) -> dict:
    """The train state of a checkpoint, after checking that this run's model (and, unless
    reset_optimizer, its optimizer) fits it."""
    state = ckpt.load_train_state(directory)
    saved_optimizer = state.get("run_config", {}).get("optim", {}).get("name", "adamw")
    if not reset_optimizer and saved_optimizer != run.optim.name:
        raise ConfigError(
            f"--resume with optim.name='{run.optim.name}', but the checkpoint holds "
            f"'{saved_optimizer}' state; resume with optim.name='{saved_optimizer}', or add "
            "--reset_optimizer to start a fresh optimizer"
        )
    saved = ckpt.read_model_config(directory).shape_dict()
    current = run.model.shape_dict()
    changed = {k: (saved[k], current.get(k)) for k in saved if saved[k] != current.get(k)}
    if changed:
        key, (old, new) = next(iter(changed.items()))
        raise ConfigError(
            f"--resume with a config that changes the model's shape (model.{key}: {old} -> {new}); "
            "resume with the original config, or start a new run in another train.out_dir"
        )
    if not (directory / SHARDED_DIR / ".metadata").is_file():
        raise CheckpointError(
            f"{directory} has no complete {SHARDED_DIR}/ (optimizer state), so it cannot be "
            "resumed; start a new run from its weights with --init_from instead"
        )
    return state


def weights_before_parallelize(model: nn.Module, directory: Path, whole_file: bool = False) -> None:
    """Load model.safetensors into the plain model, unless the sharded state holds the model
    (FSDP), which is loaded after sharding by `restore_sharded`. whole_file: from
    model.safetensors even then (resuming without the sharded state). A LoRA checkpoint holds
    only adapters: they go onto the model, whose base weights are already in place."""
    if ckpt.is_adapter_checkpoint(directory):
        load_adapter_weights(model, directory)
    elif whole_file:
        ckpt.load_weights(model, ckpt.find_checkpoint(directory))
    elif not holds_model(directory / SHARDED_DIR):
        ckpt.load_weights(model, directory)


def restore_sharded(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | MuonAdamW,
    info: DistInfo,
    rows_changed: bool = False,
) -> None:
    load_sharded_state(directory / SHARDED_DIR, model, optimizer, info, rows_changed)


def rows_changed(state: dict, tensor_parallel: int) -> bool:
    """Whether a checkpoint's sharded state holds the other row order than this run's: tensor
    parallelism regroups the fused rows (models/row_layouts.py) on one side only."""
    saved = state.get("run_config", {}).get("parallel", {}).get("tensor_parallel", 1)
    return (saved > 1) != (tensor_parallel > 1)


def save_run_checkpoint(
    checkpoints: Path,
    step: int,
    parallel: ParallelModel,
    optimizer: torch.optim.Optimizer | MuonAdamW,
    tokenizer: Tokenizer,
    run: RunConfig,
    info: DistInfo,
    summary: dict,
    train_state: dict,
    is_best: bool,
    write_weights: WeightsWriter | None = None,
) -> None:
    """Collective: every rank calls it. Staged under step-N.tmp, renamed when complete; a
    failed write (e.g. a full disk) removes the staging directory and leaves the earlier
    checkpoints and `last` as they were. write_weights replaces the full model.safetensors
    (LoRA: adapters only)."""
    name = f"step-{step:07d}"
    directory = checkpoints / name
    staging = directory.with_name(name + ".tmp")
    model = parallel.model
    try:
        if info.is_main:
            ckpt.stage_checkpoint(directory)
        barrier(info)
        save_sharded_state(
            staging / SHARDED_DIR, model, optimizer, info, include_model=parallel.fsdp
        )
        weights = None
        if not parallel.fsdp:
            weights = model
        elif run.parallel.consolidate and write_weights is None:  # gathered tensor by tensor
            stream_sharded_weights(model, staging / ckpt.MODEL_FILE, info)
        elif run.parallel.consolidate:  # LoRA: the adapters are cut from the gathered state
            weights = full_model_state(model, info, sharded=True)
        if info.is_main:
            files_weights = weights if write_weights is None else None
            ckpt.write_checkpoint_files(
                staging, run.model, files_weights, tokenizer, summary, train_state
            )
            if write_weights is not None and weights is not None:
                write_weights(staging, weights)
            ckpt.commit_checkpoint(staging, directory)
            ckpt.point_link(checkpoints / "last", name)
            if is_best:
                ckpt.point_link(checkpoints / "best", name)
            ckpt.prune_checkpoints(checkpoints, run.train.keep_checkpoints)
    except (OSError, RuntimeError, CheckpointException) as error:
        # DCP wraps a failed write in CheckpointException (a BaseException) and torch.save in
        # RuntimeError; either way the reason is the first OSError underneath.
        shutil.rmtree(staging, ignore_errors=True)
        last = checkpoints / "last"
        kept = f"{last.resolve().name} is intact" if last.exists() else "no earlier one exists"
        raise CheckpointError(
            f"could not write checkpoint {name} ({write_failure_reason(error)}); {kept}; free "
            "disk space (or move train.out_dir) and run again with --resume"
        ) from None
    barrier(info)


def write_failure_reason(error: BaseException) -> str:
    """The OS's words for why a write failed (e.g. 'No space left on device')."""
    if isinstance(error, CheckpointException):
        failures = [f[0] if isinstance(f, tuple) else f for f in error.failures.values()]
        error = next(
            (f for f in failures if isinstance(f, OSError)), failures[0] if failures else error
        )
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    seen = error.__cause__ or error.__context__
    if isinstance(seen, OSError) and seen.strerror:
        return seen.strerror
    return one_line(error)


def consolidate_checkpoint(path: str | Path) -> Path:
    """Write model.safetensors of an FSDP checkpoint saved without it (parallel.consolidate=false),
    from its sharded state, in one process. Returns the checkpoint directory."""
    path = Path(path)
    candidates = (path, path / "checkpoints" / "last", path / "last")
    found = [c for c in candidates if (c / SHARDED_DIR / ".metadata").is_file()]
    if not found:
        raise CheckpointError(
            f"{path} holds no {SHARDED_DIR}/ to consolidate; point at a checkpoint directory "
            "(checkpoints/step-*) or a run directory"
        )
    directory = found[0].resolve()
    # The manifest is checked first, and a new one is written only over content it vouched for.
    ckpt.verify_checkpoint(directory, required=True, replacing=(ckpt.MODEL_FILE,))
    if not holds_model(directory / SHARDED_DIR):
        raise CheckpointError(
            f"{directory}'s sharded state holds no model (it was not trained with fsdp): its "
            f"{ckpt.MODEL_FILE} is already the full model"
        )
    config = ckpt.read_model_config(directory)
    needed = weights_bytes(config)  # disk for the file; memory holds one tensor at a time
    elsewhere = "copy the checkpoint where it can be written and consolidate the copy"
    check_out_dir(str(directory), needed, "--checkpoint", elsewhere)
    with torch.device("meta"):
        model = Transformer(config)  # names, shapes and (under TP) the row orders
    # The row order from the checkpoint's JSON summary (not train_state.pt, which consolidate
    # never needs to unpickle): tensor parallelism wrote its regrouped rows.
    summary = read_json_object(directory / ckpt.INFO_FILE, default={})
    saved_tp = summary.get("tensor_parallel", 1)
    rows = tensor_parallel_rows(model) if isinstance(saved_tp, int) and saved_tp > 1 else {}
    entries = weight_entries(model.state_dict(), config)
    staging = directory / (ckpt.MODEL_FILE + ".tmp")
    try:
        with ckpt.writing_output(directory / ckpt.MODEL_FILE, f"free disk space or {elsewhere}"):
            stream = SafetensorsStream(staging, entries)
            try:
                for name, dtype, shape in entries:
                    tensor = torch.full(shape, float("nan"), dtype=dtype)  # never uninitialised
                    load_model_tensor(directory / SHARDED_DIR, name, tensor)
                    stream.write(name, plain_rows(name, tensor, rows))
                stream.finish()
            finally:
                stream.close()
            os.replace(staging, directory / ckpt.MODEL_FILE)
    finally:
        staging.unlink(missing_ok=True)  # gone after the rename; a failed write's leftover
    ckpt.write_manifest(directory)
    return directory
