"""A library's own words in an error (torch.load, DCP, safetensors, gguf, json) reach the user as
one plain line: no newline, no terminal escape codes. Flattened where every LmforgeError is made
(errors.one_line in its __init__) and again where the CLI prints one."""

from __future__ import annotations

import argparse
import json
import pickle

import pytest
import torch
from bad_input_builders import snapshot
from conftest import assert_one_line_error
from malformed_models import HF_BASES, base_checkpoint, hf_dir_with, sharded_checkpoint

import lmforge
from lmforge import cli
from lmforge.checkpoint.directory import write_manifest
from lmforge.errors import CheckpointError, LmforgeError, one_line
from lmforge.models.commands import PresetsCommand


@pytest.mark.parametrize(
    ("text", "flat"),
    [
        ("two\nlines", "two lines"),
        (
            "Weights only load failed. \x1b[1mdo those steps\x1b[0m. \n\t(1) x",
            "Weights only load failed. do those steps. (1) x",
        ),
        ("title \x1b]0;pwned\x07 after", "title after"),
        ("bell\x07 and \x1b[31;1mred\x1b[m and \x1bc reset", "bell and red and reset"),
        ("invalid load key, '\n'.", "invalid load key, ' '."),
        ("  padded\r\n\r\n", "padded"),
    ],
)
def test_one_line(text, flat):
    assert one_line(text) == flat


def test_one_line_of_exceptions_and_limits():
    assert one_line(ValueError()) == "ValueError"
    assert one_line(ValueError("a\nb")) == "a b"
    assert one_line("x" * 50, limit=10) == "xxxxxxx..."


def test_every_lmforge_error_is_one_line():
    error = CheckpointError("torch said:\n\x1b[1mWeights only load failed\x1b[0m\n\nmore")
    assert str(error) == "torch said: Weights only load failed more"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)  # errors cross processes too


def test_the_cli_flattens_what_it_prints(monkeypatch, capsys):
    def handler(command):
        error = LmforgeError("fine")
        error.args = ("changed\nafter\x1b[1m init",)  # what a subclass or a caller could do
        raise error

    monkeypatch.setitem(cli.COMMANDS, "presets", (PresetsCommand, handler))
    assert cli.main(["presets"]) == 2
    assert capsys.readouterr().err == "error: changed after init\n"


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # pickle's SHORT_BINUNICODE


def test_consolidate_of_a_poisoned_index_is_one_line(tmp_path, capsys):
    """An index whose pickle names a global (STACK_GLOBAL) with a newline and an escape code in
    it: the refusal quotes the name, which printed two lines, the second one bold."""
    checkpoint = sharded_checkpoint(base_checkpoint(tmp_path / "base"), tmp_path / "fsdp")
    poison = b"\x80\x04" + _unicode("os\n\x1b[1mpwned") + _unicode("system") + b"\x93."
    (checkpoint / "sharded_state" / ".metadata").write_bytes(poison)
    write_manifest(checkpoint)
    before = snapshot(tmp_path)
    assert cli.main(["consolidate", "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert_one_line_error(err, ".metadata references os pwned.system", "refusing to load it")
    assert snapshot(tmp_path) == before


def test_torch_weights_only_refusal_is_one_plain_line(tmp_path, capsys):
    """A pytorch_model.bin with a global torch does not allow: its message is bold (ANSI) and
    spans several lines."""
    directory = hf_dir_with(tmp_path / "hf", HF_BASES["llama"]())
    torch.save({"args": argparse.Namespace(lr=1)}, directory / "pytorch_model.bin")
    with pytest.raises(LmforgeError) as caught:
        lmforge.load(str(directory), device="cpu")
    message = str(caught.value)
    assert "\x1b" not in message and "\n" not in message
    assert "pytorch_model.bin" in message and "Weights only load failed" in message
    records = tmp_path / "chat.json"
    records.write_text(json.dumps([{"messages": [{"role": "user", "content": "a"}]}]))
    args = ["finetune", "sft", "--init_from", str(directory), "--finetune.data", str(records)]
    assert cli.main([*args, "--train.out_dir", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert_one_line_error(err, "pytorch_model.bin")
