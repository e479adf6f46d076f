"""The options of `lmforge plan` (the command line's dataclass) and the memory sizes it reads.
No torch here, so `lmforge --help` stays fast; the CLI imports the planner when the command runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated

import tyro

from lmforge.config import RunConfig
from lmforge.errors import ConfigError


@dataclass
class PlanCommand:
    """Estimate memory per rank for each parallel layout and name the fastest that fits."""

    run: Annotated[RunConfig, tyro.conf.arg(name="")] = field(default_factory=RunConfig)
    config: str | None = None
    """TOML run config: a path, or the name of a shipped one (quickstart, tiny)."""
    nproc_per_node: int = 1
    """Ranks per machine (one per GPU)."""
    nnodes: int = 1
    """Machines."""
    gpu_memory: str | None = None
    """One GPU's memory, e.g. 80GiB or 24GB. Default: the visible GPU's, else host memory / ranks."""


UNITS = {
    "": 2**30,  # a bare number is GiB, the unit GPUs are sold in
    "b": 1,
    "k": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
    "t": 2**40, "tib": 2**40, "tb": 10**12,
}  # fmt: skip
SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_memory(text: str, key: str = "--gpu-memory") -> int:
    """Bytes from a size such as 80GiB, 24GB, 1.5TiB or 80 (GiB); a ConfigError otherwise."""
    match = SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS or float(match.group(1)) <= 0:
        raise ConfigError(
            f"{key}={text!r} is not a memory size; give a positive number with a unit, e.g. "
            "80GiB, 24GB or 141GiB"
        )
    return int(float(match.group(1)) * UNITS[unit])
