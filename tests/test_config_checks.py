"""The range table covers every number of the run config; the defaults and shipped configs pass
it; the free-space and sampling checks accept their edge values and refuse the rest."""

from __future__ import annotations

import dataclasses
import shutil
import typing

import pytest

from lmforge import config_checks
from lmforge.config import CONFIG_DIR, FinetuneRunConfig, load_run_config
from lmforge.errors import ConfigError
from lmforge.sampling_validation import check_sampling_options

# Numbers with no range to check: any value is meaningful.
UNCHECKED = {"finetune.rewards.weights"}  # a tuple: RewardConfig checks each weight itself


def _numeric_fields(cls: type, prefix: str = "") -> list[str]:
    found = []
    for field in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[field.name]
        if dataclasses.is_dataclass(hint):
            found += _numeric_fields(hint, f"{prefix}{field.name}.")
        elif {int, float} & {hint, *typing.get_args(hint)} and hint is not bool:
            found.append(prefix + field.name)
    return found


def test_every_number_of_the_run_config_has_a_range():
    """model.* included: the same rules hold for a model read from a file (models/ranges.py)."""
    numbers = _numeric_fields(FinetuneRunConfig)
    assert "model.ffn_dim" in numbers and "optim.lr" in numbers  # the walk found the fields
    missing = [n for n in numbers if n not in config_checks.RANGES and n not in UNCHECKED]
    assert missing == []


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
def test_shipped_configs_pass(name):
    config_checks.check_ranges(load_run_config(name, cls=FinetuneRunConfig))


def test_free_space_for_one_checkpoint(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        config_checks.shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20)
    )
    config_checks.check_out_dir(str(tmp_path / "run"), 9 * 2**20)
    with pytest.raises(ConfigError, match="10 MiB free but one checkpoint needs about 11 MiB"):
        config_checks.check_out_dir(str(tmp_path / "run"), 11 * 2**20)
    assert not (tmp_path / "run").exists()


def test_checkpoint_estimate_is_weights_and_two_moments():
    run = load_run_config("tiny")
    from lmforge.models.counting import build_on_meta, count_parameters

    vocab = run.model.vocab_size or 256
    model = dataclasses.replace(run.model, vocab_size=vocab)
    expected = count_parameters(build_on_meta(model)) * 12
    assert config_checks.checkpoint_bytes_estimate(run) == expected


@pytest.mark.parametrize(
    "options",
    [
        {"top_p": 1.0},
        {"top_p": 1e-6},
        {"temperature": 0.0},
        {"top_k": 0},
        {"max_new_tokens": 1},
        {"top_k": None, "top_p": None},
    ],
)
def test_sampling_edges_are_accepted(options):
    check_sampling_options(**({"max_new_tokens": 5, "temperature": 0.8} | options))


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
        ({"temperature": float("-inf")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"prompts": ()}, "prompt"),
    ],
)
def test_sampling_options_name_the_field_as_the_caller_spells_it(options, flag):
    settings = {"max_new_tokens": 5, "temperature": 0.8} | options
    with pytest.raises(ConfigError, match=f"^{flag} "):
        check_sampling_options(**settings, flag=lambda name: name)  # e.g. an HTTP body
