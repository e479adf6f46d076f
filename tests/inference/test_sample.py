"""`lmforge sample` (in process): prompts, streaming, batching and determinism."""

from __future__ import annotations

from lmforge.cli import main
from lmforge.inference.sample import StreamPrinter, encode_prompt
from lmforge.tokenizer import ByteTokenizer


def sample_args(run_dir, *extra):
    return ["sample", "--checkpoint", str(run_dir), "--max_new_tokens", "30", *extra]


def test_single_prompt_streams_prompt_and_continuation(trained_run, capsys):
    args = sample_args(trained_run, "--prompt", "the ", "--no_stop_at_end_of_text")
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("the ") and first.endswith("\n")
    assert len(first) > len("the \n")
    assert main(args) == 0  # the same seed samples the same text
    assert capsys.readouterr().out == first
    assert main([*args, "--seed", "7"]) == 0
    assert capsys.readouterr().out != first


def test_several_prompts_print_one_block_each(trained_run, capsys):
    args = sample_args(trained_run, "--prompt", "alpha", "be", "--temperature", "0")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("--- sample 1 ---\nalpha")
    assert "\n--- sample 2 ---\nbe" in out


def test_greedy_bf16_sampling_runs(trained_run, capsys):
    args = sample_args(trained_run, "--prompt", "x", "--temperature", "0", "--dtype", "bf16")
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("x")


def test_prompt_starts_with_end_of_text():
    assert encode_prompt(ByteTokenizer(), "hi") == [256, 104, 105]


def test_stream_printer_holds_back_partial_utf8():
    import io

    import torch

    out = io.StringIO()
    printer = StreamPrinter(ByteTokenizer(), out)
    for byte in "aé✓".encode():
        printer(torch.tensor([byte]))
        assert "\ufffd" not in out.getvalue()
    assert out.getvalue() == "aé✓"


def test_quantized_and_compiled_sampling_runs(trained_run, capsys):
    for extra in (("--quantize", "int8"), ("--quantize", "int4", "--compile", "on")):
        args = sample_args(trained_run, "--prompt", "x", "--temperature", "0", *extra)
        assert main(args) == 0
        assert capsys.readouterr().out.startswith("x")
