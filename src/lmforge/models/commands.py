"""The options of `lmforge presets` (the command line's dataclass); the CLI imports
presets_table.py (torch) only when the command runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PresetsCommand:
    """List the named model presets: parameters, FLOPs per token, training memory per GPU."""

    seq_len: int = 2048
    """Sequence length for the attention part of FLOPs per token."""
    gpus: int = 8
    """World size for the memory-per-GPU columns (ddp / zero1 / fsdp)."""
