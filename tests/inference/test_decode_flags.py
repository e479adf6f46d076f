"""`lmforge sample` and `lmforge chat` read their decode flags into one `DecodeOptions`: every
field is a top-level flag of both commands, with the documented defaults, and bad values are
one-line errors."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import assert_one_line_error

from lmforge.cli import COMMANDS, main, parse
from lmforge.inference.commands import ChatCommand, SampleCommand
from lmforge.inference.options import DecodeOptions

# A non-default value for every DecodeOptions field, as typed on the command line and as parsed.
FLAGS = {
    "max_new_tokens": ("17", 17),
    "temperature": ("0.25", 0.25),
    "top_k": ("5", 5),
    "top_p": ("0.5", 0.5),
    "seed": ("7", 7),
    "device": ("cpu", "cpu"),
    "dtype": ("bf16", "bf16"),
    "quantize": ("int4", "int4"),
    "compile": ("on", "on"),
}


def test_the_table_names_every_decode_field():
    """A field added to DecodeOptions must be added here too (and so be tested as a flag)."""
    assert [f.name for f in dataclasses.fields(DecodeOptions)] == list(FLAGS)


@pytest.mark.parametrize("name", ["sample", "chat"])
def test_every_decode_flag_reaches_decode_options(name):
    command_type = COMMANDS[name][0]
    args = ["--checkpoint", "ckpt"]
    for field, (typed, _) in FLAGS.items():
        args += [f"--{field}", typed]
    command = parse(command_type, args, f"lmforge {name}")
    assert command.decode == DecodeOptions(**{field: value for field, (_, value) in FLAGS.items()})


def test_decode_defaults_of_sample_and_chat():
    auto = {"device": "auto", "dtype": "auto", "quantize": "auto", "compile": "auto"}
    common = {"top_k": None, "top_p": None, "seed": 1337, **auto}
    sample = parse(SampleCommand, ["--checkpoint", "ckpt"], "lmforge sample")
    assert sample.decode == DecodeOptions(max_new_tokens=200, temperature=0.8, **common)
    chat = parse(ChatCommand, ["--checkpoint", "ckpt"], "lmforge chat")
    assert chat.decode == DecodeOptions(max_new_tokens=256, temperature=0.0, **common)


def test_sample_keeps_its_own_flags_beside_the_decode_ones():
    args = ["--checkpoint", "c", "--prompt", "a", "b", "--chat", "--template", "chatml"]
    command = parse(SampleCommand, [*args, "--no_stop_at_end_of_text"], "lmforge sample")
    assert command.prompt == ("a", "b") and command.chat and command.template == "chatml"
    assert command.stop_at_end_of_text is False


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["sample", "--dtype", "fp16"], "fp16"),
        (["chat", "--quantize", "int3"], "int3"),
        (["sample", "--compile", "maybe"], "maybe"),
        (["serve", "--dtype", "fp16"], "fp16"),
        (["serve", "--quantize", "int3"], "int3"),
        (["chat", "--temperatur", "0"], "--temperatur"),
    ],
)
def test_bad_decode_values_are_one_line_errors(capsys, args, fragment):
    assert main([*args, "--checkpoint", "ckpt"]) == 2
    assert_one_line_error(capsys.readouterr().err, fragment)


@pytest.mark.parametrize("name", ["sample", "chat"])
def test_help_lists_the_decode_flags(capsys, name):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for field in FLAGS:
        assert f"--{field} " in out, field
