"""The options of `lmforge train`, `lmforge prepare` and `lmforge plot` (the command line's
dataclasses). No torch here, so `lmforge --help` stays fast; the CLI imports the loop, the data
preparation and the plotting only when a command runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import tyro

from lmforge.config import RunConfig


@dataclass
class TrainCommand:
    """Train a model. Config: a TOML file (--config) plus dotted overrides such as --train.max_steps 100."""

    run: Annotated[RunConfig, tyro.conf.arg(name="")] = field(default_factory=RunConfig)
    config: str | None = None
    """TOML run config: a path, or the name of a shipped one (quickstart, tiny)."""
    resume: bool = False
    """Continue the run in train.out_dir from its last checkpoint, exactly."""
    init_from: str | None = None
    """Start a new run from these weights: a checkpoint or run directory, a Hugging Face directory or
    a GGUF file (model shapes must match the run's; each rank reads only its shards)."""
    start_step: int | None = None
    """Set the step counter (learning-rate schedule, train.max_steps) of the resumed or new run."""
    reset_optimizer: bool = False
    """With --resume: restore weights, data position and step, but start a fresh optimizer."""


@dataclass
class PrepareCommand:
    """Tokenize the configured data source into token shards (train runs this automatically)."""

    run: Annotated[RunConfig, tyro.conf.arg(name="")] = field(default_factory=RunConfig)
    config: str | None = None
    """TOML run config whose [data] section to prepare."""


@dataclass
class PlotCommand:
    """Draw the loss curves of a run directory to a PNG."""

    run_dir: tyro.conf.Positional[str]
    out: str | None = None
    """PNG path; default RUN_DIR/loss.png."""
