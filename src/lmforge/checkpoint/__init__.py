"""Checkpoints, one home for all of them: the directory format (atomic writes, manifest,
verification, `load_model`), run state for resuming (checkpoint/run_state.py), LoRA adapter
checkpoints, weights to start from (lmforge checkpoints, GGUF files, HF dirs) and telling those
formats apart.

Names are resolved lazily, so `lmforge convert` (which imports `checkpoint.detect`) starts
without importing torch, and the training modules that import `checkpoint.directory` don't pull
in the rest of the package.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "find_checkpoint": "lmforge.checkpoint.directory",
    "verify_checkpoint": "lmforge.checkpoint.directory",
    "save_checkpoint": "lmforge.checkpoint.directory",
    "read_model_config": "lmforge.checkpoint.directory",
    "load_model": "lmforge.checkpoint.directory",
    "load_weights": "lmforge.checkpoint.directory",
    "load_train_state": "lmforge.checkpoint.directory",
    "is_adapter_checkpoint": "lmforge.checkpoint.directory",
    "refuse_adapter_checkpoint": "lmforge.checkpoint.directory",
    "save_run_checkpoint": "lmforge.checkpoint.run_state",
    "consolidate_checkpoint": "lmforge.checkpoint.run_state",
    "adapter_writer": "lmforge.checkpoint.adapters",
    "load_adapter_weights": "lmforge.checkpoint.adapters",
    "read_adapter_config": "lmforge.checkpoint.adapters",
    "load_pretrained": "lmforge.checkpoint.pretrained",
    "load_state": "lmforge.checkpoint.pretrained",
    "detect_format": "lmforge.checkpoint.detect",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
