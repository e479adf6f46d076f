"""Run config: TOML loading, precedence, strict checking with suggestions, dump/reload."""

from __future__ import annotations

import dataclasses

import pytest

from lmforge.cli import parse
from lmforge.config import (
    CONFIG_DIR,
    RunConfig,
    config_from_dict,
    dump_toml,
    load_run_config,
    resolve_config_path,
)
from lmforge.errors import ConfigError
from lmforge.models.presets import PRESETS
from lmforge.train.commands import TrainCommand

TOML = """
[model]
preset = "tiny-llama"
dim = 96
num_heads = 6

[data]
source = "corpus.txt"
tokenizer = "char"

[optim]
lr = 1
schedule = "wsd"

[train]
max_steps = 7
seq_len = 64
dtype = "fp32"
"""


def test_toml_values_over_preset_over_defaults(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TOML)
    run = load_run_config(str(path))
    assert run.model.preset == "tiny-llama"
    assert (run.model.dim, run.model.num_heads) == (96, 6)  # the file beats the preset
    assert (run.model.num_layers, run.model.num_kv_heads) == (2, 2)  # the preset beats defaults
    assert run.model.vocab_size is None and run.model.ffn_multiple_of == 64  # defaults
    assert run.optim.lr == 1.0 and isinstance(run.optim.lr, float)  # int promoted to float
    assert run.optim.schedule == "wsd" and run.train.seq_len == 64
    assert run.data.tokenizer == "char" and run.data.vocab_size == 4096


def test_cli_overrides_beat_the_file_and_round_trip_through_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TOML)
    args = ["--config", str(path), "--train.max_steps", "9", "--model.num_layers", "3"]
    args += ["--optim.min_lr", "0.5", "--data.vocab_size", "300", "--logging.no_progress_bar"]
    command = parse(TrainCommand, args, "lmforge train")
    run = command.run
    assert command.config == str(path)
    assert run.train.max_steps == 9 and run.model.num_layers == 3 and run.optim.min_lr == 0.5
    assert run.model.dim == 96 and run.train.seq_len == 64  # untouched file values survive
    assert run.logging.progress_bar is False
    dumped = tmp_path / "dumped.toml"
    dump_toml(run, dumped)
    assert load_run_config(str(dumped)) == run
    dump_toml(load_run_config(str(dumped)), tmp_path / "again.toml")
    assert (tmp_path / "again.toml").read_text() == dumped.read_text()


def test_cli_preset_flag_replaces_the_files_preset(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\npreset = "small-llama"\n')
    run = parse(TrainCommand, ["--config", str(path), "--model.preset", "tiny-gpt2"], "x").run
    assert run.model.preset == "tiny-gpt2"
    assert run.model.norm == "layernorm" and run.model.dim == 64 and run.model.tie_embeddings


@pytest.mark.parametrize("name", ["quickstart", "tiny", "shakespeare-speedrun"])
def test_shipped_configs_load_and_round_trip(tmp_path, name):
    run = load_run_config(name)
    assert resolve_config_path(name) == CONFIG_DIR / f"{name}.toml"
    assert run.model.preset is None or run.model.preset in PRESETS
    dump_toml(run, tmp_path / "x.toml")
    assert load_run_config(str(tmp_path / "x.toml")) == run


def test_quickstart_values():
    run = load_run_config("quickstart")
    assert run.model.preset is None and run.model.dim == 256 and run.model.num_kv_heads == 4
    assert run.data.source == "python-stdlib" and run.data.tokenizer == "bpe"
    assert run.train.max_steps == 720 and run.train.seq_len == 256
    assert run.train.batch_tokens == 2048 and run.train.time_budget == 200


def test_cli_preset_replaces_the_files_model_table():
    run = load_run_config("quickstart", preset="tiny-llama")
    assert run.model.preset == "tiny-llama" and run.model.dim == 64
    assert run.train.max_steps == 720  # the rest of the file still applies


def test_defaults_round_trip(tmp_path):
    dump_toml(RunConfig(), tmp_path / "d.toml")
    assert load_run_config(str(tmp_path / "d.toml")) == RunConfig()
    assert load_run_config(None) == RunConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"model": {"num_layer": 3}},
            "unknown config key 'model.num_layer'; did you mean 'model.num_layers'?",
        ),
        ({"trian": {"max_steps": 3}}, "unknown config key 'trian'; did you mean 'train'?"),
        ({"optim": {"learning_rate": 1.0}}, "unknown config key 'optim.learning_rate'"),
        ({"train": {"max_steps": "ten"}}, "train.max_steps must be int, got str 'ten'"),
        ({"train": {"max_steps": 1.5}}, "train.max_steps must be int, got float"),
        ({"train": {"max_steps": True}}, "train.max_steps must be int, got bool"),
        ({"train": {"compile": 1}}, "train.compile must be bool, got int"),
        ({"optim": {"lr": "fast"}}, "optim.lr must be float, got str"),
        ({"train": {"seq_len": "long"}}, "train.seq_len must be int"),
        (
            {"train": {"dtype": "fp8"}},
            "train.dtype = 'fp8' is not one of 'auto', 'bf16', 'fp16', 'fp32'",
        ),
        ({"optim": {"schedule": "linear"}}, "is not one of 'cosine', 'constant', 'wsd'"),
        ({"model": 3}, "'model' must be a table, got 3"),
        ({"data": "x"}, "'data' must be a table, got 'x'"),
        ({"model": {"preset": 3}}, "model.preset must be str, got 3"),
        ({"model": {"preset": "gpt-2"}}, "unknown model preset 'gpt-2'; did you mean 'gpt2'?"),
    ],
)
def test_bad_values_are_config_errors_with_hints(data, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict(data, "run.toml")
    assert message in str(error.value)
    assert str(error.value).startswith(("run.toml: ", "unknown model preset"))


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys: out_dir, max_steps"):
        config_from_dict({"train": {"zzzzzz": 1}})


def test_optional_fields_accept_values_and_none_is_default():
    run = config_from_dict({"train": {"seq_len": 128}, "model": {"vocab_size": 512}})
    assert run.train.seq_len == 128 and run.model.vocab_size == 512
    assert config_from_dict({}).train.seq_len is None


def test_invalid_toml_and_unknown_config_name(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[train\nmax_steps = 3\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_run_config(str(path))
    with pytest.raises(
        ConfigError, match="neither a file nor a shipped config.*quickstart.*sft-smollm2.*tiny"
    ):
        load_run_config("no-such-config")


def test_model_shape_dict_ignores_non_shape_fields():
    base = config_from_dict({"model": {"preset": "tiny-llama", "vocab_size": 320}}).model
    assert base.shape_dict() == dataclasses.replace(base, dropout=0.1, rope_theta=1.0).shape_dict()
    assert base.shape_dict() != dataclasses.replace(base, num_layers=3).shape_dict()
    assert "context_length" not in base.shape_dict()  # RoPE: any length fits the weights
    gpt2 = config_from_dict({"model": {"preset": "tiny-gpt2", "vocab_size": 320}}).model
    assert gpt2.shape_dict()["context_length"] == 128
