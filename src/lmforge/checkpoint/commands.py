"""The options of `lmforge consolidate` (the command line's dataclass); the CLI imports
run_state.py (torch) only when the command runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ConsolidateCommand:
    """Gather an FSDP checkpoint's sharded model into model.safetensors (one process)."""

    checkpoint: str
    """Checkpoint directory, or a run directory (uses its last checkpoint)."""
