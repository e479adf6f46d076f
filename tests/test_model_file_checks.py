"""Every model read from a file is checked before anything is allocated: classes of bad input.

For every numeric field of the model config and every bad value of its class (NaN, inf, negative,
zero where invalid, absurdly large, not an integer), written into an lmforge checkpoint's
config.json and into an HF config.json under the HF name, each command that reads the file
(sample, export hf/gguf, finetune --init_from, convert, and the Python API's lmforge.load) ends
in one line naming the file and the field, exit code 2, no traceback, and nothing written. A
config whose weights cannot fit in memory is refused the same way, before any allocation."""

from __future__ import annotations

import json

import pytest
from bad_input_builders import snapshot
from conftest import assert_one_line_error
from malformed_models import (
    FIELD_VALUES,
    HF_BASES,
    HF_GRID,
    base_checkpoint,
    checkpoint_with,
    grid,
    hf_config_with,
    hf_dir_with,
    numeric_fields,
    value_id,
)

import lmforge
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.formats.hf_config import model_config_from_hf

# dim 2^20 and a 2^24-token vocabulary: every field in range, 70 TB of fp32 embedding alone
HUGE_MODEL = {"dim": 2**20, "vocab_size": 2**24, "num_heads": 16}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("model-files")
    turn = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "a b a"}]
    (root / "chat.json").write_text(json.dumps([{"messages": turn}] * 4))
    return {"checkpoint": base_checkpoint(root / "base"), "chat": root / "chat.json"}


def _refused(args: list[str], capsys, *fragments: str) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    return assert_one_line_error(err, *fragments)


def _load_refused(path, *fragments: str) -> None:
    with pytest.raises(LmforgeError) as caught:
        lmforge.load(str(path), device="cpu")
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message
    for fragment in fragments:
        assert fragment in message, message


def _finetune(source, shared, tmp) -> list[str]:
    out = ["--train.out_dir", str(tmp / "ft"), "--train.device", "cpu"]
    return [
        "finetune",
        "sft",
        "--init_from",
        str(source),
        "--finetune.data",
        str(shared["chat"]),
        *out,
    ]


def _every_reader_refuses_checkpoint(checkpoint, shared, tmp, capsys, *fragments) -> None:
    before = snapshot(tmp)
    _refused(["sample", "--checkpoint", str(checkpoint), "--prompt", "x"], capsys, *fragments)
    _refused(
        ["export", str(checkpoint), "--format", "hf", "--out", str(tmp / "hf")], capsys, *fragments
    )
    gguf_out = str(tmp / "model.gguf")
    _refused(["export", str(checkpoint), "--format", "gguf", "--out", gguf_out], capsys, *fragments)
    _refused(_finetune(checkpoint, shared, tmp), capsys, *fragments)
    _load_refused(checkpoint, *fragments)
    assert snapshot(tmp) == before  # nothing written, nothing removed


def _every_reader_refuses_hf_dir(directory, shared, tmp, capsys, *fragments) -> None:
    before = snapshot(tmp)
    _refused(["convert", str(directory), "--out", str(tmp / "out")], capsys, *fragments)
    _refused(_finetune(directory, shared, tmp), capsys, *fragments)
    _load_refused(directory, *fragments)
    assert snapshot(tmp) == before


def test_model_file_counts():
    """Quoted in docs/reliability.md and README.md: keep them in step."""
    from test_model_file_formats import GGUF_GRID, META_GRID

    files = {"lmforge": len(grid(FIELD_VALUES)), "hf": len(HF_GRID)}
    files |= {"gguf": len(GGUF_GRID), "meta": len(META_GRID)}
    assert files == {"lmforge": 189, "hf": 175, "gguf": 25, "meta": 46}
    assert sum(files.values()) == 435
    readers = {"lmforge": 5, "hf": 3, "gguf": 2, "meta": 1}  # the commands each file goes through
    assert sum(files[k] * readers[k] for k in files) == 1566


def test_every_numeric_field_is_in_the_grid():
    """A new number in ModelConfig must get its bad values here (and a rule in the range table)."""
    assert sorted(FIELD_VALUES) == sorted(numeric_fields())
    hf_fields = {ours for family in HF_GRID for ours in [family[1]]}
    assert len(hf_fields) > 30  # every HF spelling of a size, a rate and a RoPE parameter


@pytest.mark.parametrize(
    ("field", "value"), grid(FIELD_VALUES), ids=lambda v: v if isinstance(v, str) else value_id(v)
)
def test_lmforge_config_json(field, value, shared, tmp_path, capsys):
    checkpoint = checkpoint_with(shared["checkpoint"], tmp_path / "bad", **{field: value})
    _every_reader_refuses_checkpoint(
        checkpoint, shared, tmp_path, capsys, "config.json", f"model.{field}"
    )


@pytest.mark.parametrize(
    ("family", "hf_name", "value"), HF_GRID, ids=lambda v: v if isinstance(v, str) else value_id(v)
)
def test_hf_config_json(family, hf_name, value, shared, tmp_path, capsys):
    directory = hf_dir_with(tmp_path / "hf", hf_config_with(family, hf_name, value))
    _every_reader_refuses_hf_dir(directory, shared, tmp_path, capsys, "config.json", hf_name)


def test_the_unmodified_files_pass(shared, tmp_path, capsys):
    """The grid's controls: without the planted value the same files get past every check."""
    checkpoint = checkpoint_with(shared["checkpoint"], tmp_path / "ok")
    args = ["sample", "--checkpoint", str(checkpoint), "--prompt", "x", "--max_new_tokens", "1"]
    assert main(args) == 0, capsys.readouterr().err
    for family, make in HF_BASES.items():
        model_config_from_hf(make(), f"{family} config.json")  # raises if the base were refused


def test_a_per_layer_override_is_checked_too(shared, tmp_path, capsys):
    layers = [{"ffn_dim": -384}, {}]
    checkpoint = checkpoint_with(shared["checkpoint"], tmp_path / "bad", layers=layers)
    _every_reader_refuses_checkpoint(
        checkpoint, shared, tmp_path, capsys, "config.json", "model.layers[0].ffn_dim", "-384"
    )


def test_weights_beyond_memory_are_refused_before_allocation(shared, tmp_path, capsys):
    fragments = ("model needs", "TB of fp32 weights", "free")
    checkpoint = checkpoint_with(shared["checkpoint"], tmp_path / "huge", **HUGE_MODEL)
    _every_reader_refuses_checkpoint(checkpoint, shared, tmp_path, capsys, *fragments)
    hf = HF_BASES["llama"]() | {"hidden_size": 2**20, "vocab_size": 2**24, "head_dim": None}
    hf["num_attention_heads"] = hf["num_key_value_heads"] = 16
    directory = hf_dir_with(tmp_path / "hf", hf)
    _every_reader_refuses_hf_dir(directory, shared, tmp_path, capsys, *fragments)
