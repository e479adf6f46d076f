"""The Python API: `from lmforge import load, train, finetune`.

    model = load("runs/quickstart")                  # checkpoint or run dir, .gguf file, HF dir
    model.generate(["Once upon a time"], max_new_tokens=40)
    model.loglikelihood([("The capital of France is", " Paris")])
    model.loglikelihood_rolling(["A whole document to score."])

The signatures and docstrings are the contract (docs/python-api.md shows them in use, and its
examples run in the test suite). `load` and `LanguageModel` live in inference/language_model.py,
where `lmforge sample` and the lm-evaluation-harness adapter use them too;
this module adds `train` and `finetune`, which sit above everything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from lmforge.config import (
    FinetuneRunConfig,
    RunConfig,
    config_from_dict,
    resolve_config_path,
    to_dict,
)
from lmforge.errors import ConfigError
from lmforge.finetune.run import finetune as finetune_loop
from lmforge.inference.language_model import LanguageModel, encode_prompt, load
from lmforge.train.loop import TrainResult
from lmforge.train.loop import train as train_loop

__all__ = ["LanguageModel", "encode_prompt", "finetune", "load", "train"]

ConfigSource = str | Path | dict | RunConfig | None


def _run_config(source: ConfigSource, overrides: dict[str, Any] | None, cls: type) -> RunConfig:
    """A run config from a TOML path or shipped name, a nested dict or a config object, with
    dotted-key overrides on top (the CLI's --section.key flags)."""
    name = "overrides"
    if source is None:
        data: dict = {}
    elif isinstance(source, RunConfig):
        data = to_dict(source)
    elif isinstance(source, dict):
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in source.items()}
    else:
        path = resolve_config_path(str(source))
        name = str(path)
        data = tomllib.loads(path.read_text())
    for key, value in (overrides or {}).items():
        *sections, leaf = key.split(".")
        table = data
        for section in sections:
            table = table.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"override {key}: {section} is not a table")
        table[leaf] = value
    return config_from_dict(data, name, cls=cls)


def train(
    config: ConfigSource = None,
    overrides: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    init_from: str | None = None,
) -> TrainResult:
    """Pretrain a model, as `lmforge train` does; returns the run's directory, step and losses.

    config: a TOML path or shipped config name ("quickstart", "tiny"), a nested dict as the TOML
    would hold, or a RunConfig. overrides: dotted keys on top, e.g. {"train.max_steps": 100}.
    """
    return train_loop(_run_config(config, overrides, RunConfig), resume=resume, init_from=init_from)


def finetune(
    config: ConfigSource = None,
    overrides: dict[str, Any] | None = None,
    *,
    resume: bool = False,
) -> TrainResult:
    """Finetune (sft, dpo or distill, optionally LoRA) as `lmforge finetune` does.

    config and overrides as for `train`; the [finetune] table picks the method and starting
    weights, e.g. {"finetune.method": "sft", "finetune.init_from": "runs/base"}.
    """
    return finetune_loop(_run_config(config, overrides, FinetuneRunConfig), resume=resume)
