"""Checkpoint directories: write atomically, find, verify and load them.

A checkpoint directory is self-contained:
    config.json              model config
    model.safetensors        weights (tied tensors stored once)
    lmforge_tokenizer.json   tokenizer (+ tokenizer.json for BPE)
    checkpoint.json          step, tokens seen, val loss (human-readable)
    manifest.json            size and SHA-256 of every other file (verified on load)
    train_state.pt           step, loader position, RNG, run config (resume only;
                             read with torch.load(weights_only=True))
    sharded_state/           optimizer state (and, for FSDP, the model) as a
                             torch.distributed.checkpoint directory: written in shards by
                             every rank, read back at any world size (resume only)

In a run directory they live in checkpoints/step-NNNNNNN/, with `last` and `best` symlinks that
are swapped atomically, so an interrupted save never breaks `last`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from lmforge._validate import from_dict
from lmforge.config_checks import check_new_output
from lmforge.errors import CheckpointError, one_line
from lmforge.json_files import read_json_object
from lmforge.models.config import ModelConfig
from lmforge.models.footprint import materialize, refuse_if_too_large
from lmforge.models.ranges import check_model_file
from lmforge.models.transformer import Transformer
from lmforge.tokenizer import Tokenizer, load_tokenizer
from lmforge.tokenizer.base import DESCRIPTOR

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
INFO_FILE = "checkpoint.json"
STATE_FILE = "train_state.pt"
MANIFEST_FILE = "manifest.json"
REQUIRED = (CONFIG_FILE, MODEL_FILE, DESCRIPTOR)
# A LoRA run's checkpoint holds these in place of model.safetensors (checkpoint/adapters.py).
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# Writes a checkpoint's weights (a module, or a full state dict gathered from FSDP shards) into
# the staging directory, instead of the default full model.safetensors.
WeightsWriter = Callable[[Path, "nn.Module | dict[str, torch.Tensor]"], None]


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [p for p in directory.rglob("*") if p.is_dir()] + [directory]:
        _fsync_dir(path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage_checkpoint(directory: Path) -> Path:
    """A fresh, empty staging directory beside `directory` (any leftover of a crash is replaced)."""
    staging = Path(directory).with_name(Path(directory).name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def save_weights(
    weights: nn.Module | dict[str, torch.Tensor], config: ModelConfig, path: Path
) -> None:
    """model.safetensors from a model or a full state dict; a tied embedding and head are
    stored once, under one name, whatever strategy gathered them."""
    if isinstance(weights, nn.Module):
        weights = {k: v.detach() for k, v in weights.state_dict().items()}
    if config.tie_embeddings:
        weights = {k: v for k, v in weights.items() if k != "lm_head.weight"}
    weights = {k: v.contiguous() for k, v in weights.items()}
    safetensors.torch.save_file(weights, str(path))


def write_checkpoint_files(
    staging: Path,
    config: ModelConfig,
    weights: nn.Module | dict[str, torch.Tensor] | None,
    tokenizer: Tokenizer,
    info: dict,
    train_state: dict | None = None,
) -> None:
    """The single-process files of a checkpoint: config, weights, tokenizer, info, train state.

    `weights` is a model, a full state dict (e.g. gathered from FSDP shards), or None when the
    weights exist only as FSDP shards (`lmforge consolidate` writes them later)."""
    (staging / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    if weights is not None:
        save_weights(weights, config, staging / MODEL_FILE)
    tokenizer.save(staging)
    (staging / INFO_FILE).write_text(json.dumps(info, indent=2))
    if train_state is not None:
        torch.save(train_state, staging / STATE_FILE)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """manifest.json: the size and SHA-256 of every other file, so a load can tell a complete,
    intact checkpoint from a truncated or corrupted one."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in files
    }
    temporary = directory / (MANIFEST_FILE + ".tmp")
    temporary.write_text(json.dumps({"files": entries}, indent=1))
    os.replace(temporary, directory / MANIFEST_FILE)


def verify_checkpoint(
    directory: Path, required: bool = True, replacing: tuple[str, ...] = ()
) -> None:
    """Check every file against manifest.json (sizes, then checksums); CheckpointError naming
    the first bad file. Without a manifest: an error if `required`, else nothing to check.
    `replacing`: files the caller is about to rewrite (their absence or content is no concern)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        if required:
            raise CheckpointError(
                f"checkpoint {directory} has no {MANIFEST_FILE} (its save never finished); "
                "use an earlier checkpoint"
            )
        return
    try:
        entries = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{manifest_path} is not a valid manifest; use an earlier checkpoint"
        ) from None
    if not isinstance(entries, dict):
        raise CheckpointError(f"{manifest_path} is not a valid manifest; use an earlier checkpoint")
    entries = {name: entry for name, entry in entries.items() if name not in replacing}
    if not all(isinstance(e, dict) and {"bytes", "sha256"} <= e.keys() for e in entries.values()):
        raise CheckpointError(f"{manifest_path} is not a valid manifest; use an earlier checkpoint")
    for name, expected in entries.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint {directory} is missing {name}; use an earlier checkpoint"
            )
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(
                f"checkpoint {directory}: {name} is {size} bytes, the manifest says "
                f"{expected['bytes']} (truncated or edited); use an earlier checkpoint, or "
                f"delete {MANIFEST_FILE} if you edited it on purpose"
            )
    for name, expected in entries.items():
        if _sha256(directory / name) != expected["sha256"]:
            raise CheckpointError(
                f"checkpoint {directory}: {name} does not match its checksum (corrupted or "
                f"edited); use an earlier checkpoint, or delete {MANIFEST_FILE} if you edited "
                "it on purpose"
            )


def commit_checkpoint(staging: Path, directory: Path) -> Path:
    """Write the manifest, fsync the staged files, then rename the staging directory into place."""
    write_manifest(staging)
    _fsync_tree(staging)
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    _fsync_dir(directory.parent)
    return directory


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    tokenizer: Tokenizer,
    info: dict,
    train_state: dict | None = None,
) -> Path:
    """Write a checkpoint under a temporary name, fsync it, then rename it into place. A failed
    write (a full disk) is one CheckpointError, and the half-written staging copy is removed
    (an interrupt leaves it, as a crash would: the next save of the name replaces it)."""
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".tmp")  # stage_checkpoint's name
    try:
        with writing_output(directory):
            staging = stage_checkpoint(directory)
            write_checkpoint_files(staging, model.config, model, tokenizer, info, train_state)
            return commit_checkpoint(staging, directory)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def point_link(link: Path, target_name: str) -> None:
    """Atomically make `link` a relative symlink to `target_name` (a sibling)."""
    temporary = link.with_name(link.name + ".tmp")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target_name)
    os.replace(temporary, link)


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints; never the ones last/best point to."""
    protected = {
        (checkpoints / name).resolve() for name in ("last", "best") if (checkpoints / name).exists()
    }
    steps = sorted(
        p for p in checkpoints.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")
    )
    for old in steps[: max(len(steps) - keep, 0)]:
        if old.resolve() not in protected:
            shutil.rmtree(old)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir itself, or the `last` checkpoint of a run dir or checkpoints dir."""
    path = Path(path)
    for candidate in (path, path / "checkpoints" / "last", path / "last"):
        if (candidate / CONFIG_FILE).is_file() or (candidate / MODEL_FILE).is_file():
            missing = [name for name in REQUIRED if not (candidate / name).is_file()]
            if missing == [MODEL_FILE] and _holds_model_shards(candidate):
                raise CheckpointError(
                    f"checkpoint {candidate} holds its model only as FSDP shards; run "
                    f"`lmforge consolidate --checkpoint {candidate}` to write {MODEL_FILE}"
                )
            if missing:
                raise CheckpointError(
                    f"checkpoint {candidate} is incomplete (missing {', '.join(missing)}); "
                    "point at another checkpoint, e.g. one under checkpoints/step-*"
                )
            return candidate
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist; check the path")
    raise CheckpointError(
        f"{path} is not a checkpoint (no {CONFIG_FILE} + {MODEL_FILE}) and holds no checkpoints/last; "
        "point at a run directory or a checkpoint directory"
    )


def _holds_model_shards(directory: Path) -> bool:
    # deferred: DCP takes ~0.6 s to import, and only sharded (FSDP) checkpoints need it
    from lmforge.parallel.sharded_state import SHARDED_DIR, holds_model

    sharded = directory / SHARDED_DIR
    return (sharded / ".metadata").is_file() and holds_model(sharded)


def read_model_config(directory: Path) -> ModelConfig:
    """The checkpoint's model config, checked (types, ranges, shapes) before anything is built."""
    path = Path(directory) / CONFIG_FILE
    config = from_dict(ModelConfig, read_json_object(path), str(path), "model.")
    check_model_file(config, str(path))
    return config


def load_weights(model: nn.Module, directory: Path) -> None:
    """Load model.safetensors into `model`, checking every shape against the file header first."""
    path = Path(directory) / MODEL_FILE
    try:  # the header alone: shapes are checked before any tensor is read or allocated
        with safetensors.safe_open(str(path), framework="pt") as handle:
            file_shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (safetensors.SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({error}); it may be truncated: use "
            "another checkpoint"
        ) from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatched = [k for k, shape in file_shapes.items() if k in expected and expected[k] != shape]
    if mismatched:
        key = mismatched[0]
        raise CheckpointError(
            f"checkpoint {directory} does not fit this model: {key} is {file_shapes[key]} in the file "
            f"but {expected[key]} in the model; use the checkpoint's own model config"
        )
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(path), strict=False)
    except (safetensors.SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} could not be read ({error}); it may be truncated: use another checkpoint"
        ) from None
    # Tied weights are stored once; their second name is legitimately absent from the file.
    tied = {"lm_head.weight", "token_embedding.weight"} if model.config.tie_embeddings else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory} does not fit this model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); use the checkpoint's own model config"
        )


def is_adapter_checkpoint(directory: Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def refuse_adapter_checkpoint(path: str | Path) -> None:
    """sample, chat, eval and export need full weights: point LoRA checkpoints at `merge`."""
    path = Path(path)
    for candidate in (path, path / "checkpoints" / "last", path / "last"):
        if is_adapter_checkpoint(candidate):
            raise CheckpointError(
                f"{candidate} holds only LoRA adapters; run `lmforge merge {path} --out DIR` "
                "and use DIR"
            )


def load_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[Transformer, Tokenizer, Path]:
    """The model (eval mode) and tokenizer of a checkpoint, a run dir or a checkpoints dir.
    A LoRA checkpoint (adapters only) is refused with a pointer to `lmforge merge`."""
    refuse_adapter_checkpoint(path)
    directory = find_checkpoint(path)
    verify_checkpoint(directory, required=False)  # checkpoints from elsewhere may have none
    config = read_model_config(directory)
    refuse_if_too_large(config, str(directory), device=device)
    with torch.device("meta"):
        model = Transformer(config)
    model = materialize(model, device, str(directory))
    if config.tie_embeddings:  # re-tie before loading: the file stores the shared tensor once
        model.lm_head.weight = model.token_embedding.weight
    load_weights(model, directory)
    return model.eval(), load_tokenizer(directory), directory


def load_train_state(directory: Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no {STATE_FILE}, so it cannot be resumed; "
            "start a new run from its weights with --init_from instead"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise CheckpointError(
            f"{path} was refused by torch.load(weights_only=True) ({one_line(error, 160)}); it "
            "holds more than tensors and plain data, so it was not unpickled: resume from a "
            "checkpoint you made"
        ) from None


def check_out_dir(out_dir: Path) -> None:
    """Refuse an --out that is in the way (an existing file or non-empty directory: a conversion
    never deletes or mixes into user files) or cannot be written, before any work starts."""
    check_new_output(out_dir, "--out")


@contextlib.contextmanager
def writing_output(
    out: Path, fix: str = "free disk space or choose another --out"
) -> Iterator[None]:
    """A failed write of an output (a full disk, a permission lost meanwhile) as one line; the
    caller removes its staging copy, and nothing that existed before was touched."""
    try:
        yield
    except (OSError, safetensors.SafetensorError) as error:
        reason = getattr(error, "strerror", None) or one_line(error, 160)
        message = f"could not write {out} ({reason}); nothing was left there: {fix}"
        raise CheckpointError(message) from None
