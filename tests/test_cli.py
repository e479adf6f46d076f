"""The `lmforge` command line: overrides, user errors as one line + exit 2, end to end runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli

from lmforge import cli
from lmforge.cli import main
from lmforge.train.commands import TrainCommand

TINY = [
    "--model.preset",
    "tiny-llama",
    "--data.tokenizer",
    "byte",
    "--train.seq_len",
    "32",
    "--train.micro_batch_size",
    "4",
    "--train.batch_tokens",
    "128",
    "--train.dtype",
    "fp32",
    "--train.peak_tflops",
    "1",
    "--train.eval_batches",
    "1",
    "--logging.no_progress_bar",
]


def tiny_train_args(source, data_dir, out_dir, *extra):
    return [
        "train",
        *TINY,
        "--data.source",
        str(source),
        "--data.dir",
        str(data_dir),
        "--train.out_dir",
        str(out_dir),
        "--train.max_steps",
        "2",
        *extra,
    ]


# ---------------------------------------------------------------- in-process


def test_usage_and_unknown_command(capsys):
    assert main([]) == 2
    assert "usage: lmforge <command>" in capsys.readouterr().out
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "prepare", "sample", "plot", "presets"):
        assert f"  {name} " in out
    assert main(["trian"]) == 2
    assert_one_line_error(capsys.readouterr().err, "unknown command 'trian'", "train, prepare")


def test_cli_override_reaches_the_command(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setitem(cli.COMMANDS, "train", (TrainCommand, seen.append))
    (tmp_path / "run.toml").write_text("[train]\nmax_steps = 11\n[optim]\nlr = 0.5\n")
    args = ["train", "--config", "run.toml", "--train.max_steps", "42", "--model.num-kv-heads", "2"]
    assert main([*args, "--resume"]) == 0
    (command,) = seen
    assert command.resume is True and command.config == "run.toml"
    assert command.run.train.max_steps == 42  # flag beats file
    assert command.run.optim.lr == 0.5  # file beats default
    assert command.run.model.num_kv_heads == 2  # dashes work as well as underscores
    assert main(["train"]) == 0
    assert seen[1].run.train.max_steps == 1000 and seen[1].resume is False


def test_presets_command(capsys):
    assert main(["presets", "--seq_len", "1024"]) == 0
    out = capsys.readouterr().out
    assert "seq_len 1024" in out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert "8,030,261,248" in lines["llama3-8b"]
    assert "124,439,808" in lines["gpt2"]
    assert "6,738,415,616" in lines["llama2-7b"]
    assert lines["tiny-llama"].split()[1] == "*"  # vocab follows the tokenizer


def test_prepare_command(capsys, corpus_file, tmp_path):
    args = ["prepare", "--data.source", str(corpus_file), "--data.tokenizer", "byte"]
    assert main([*args, "--data.dir", "prepared"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("prepared prepared: {'train': ")
    assert "vocab 257 (byte)" in out
    assert (tmp_path / "prepared" / "index.json").is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "matches no files"),
        (b"", "contains no text"),
        (b"PK\x03\x04\x00\x00binary", "looks binary (it contains NUL bytes)"),
        ("naïve café".encode("latin-1"), "is not valid UTF-8"),
    ],
    ids=["missing", "empty", "binary", "latin1"],
)
def test_prepare_bad_input_in_process(capsys, tmp_path, content, message):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    args = ["prepare", "--data.source", str(path), "--data.tokenizer", "byte"]
    assert main([*args, "--data.strict_utf8"]) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, message)
    assert not (tmp_path / "data").exists()


def test_tyro_error_in_process_is_one_line(capsys):
    assert main(["train", "--train.max_steps", "many"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--train.max_steps", "'many'")


def test_plot_of_a_non_run(capsys, tmp_path):
    assert main(["plot", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "has no metrics.jsonl")


# ---------------------------------------------------------------- subprocess: one-line errors


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["--model.num_layer", "3"],
            ["Unrecognized options: --model.num_layer", "--model.num_layers"],
        ),
        (["--train.max_steps", "abc"], ["--train.max_steps", "'abc'"]),
        (["--train.dtype", "fp8"], ["invalid choice 'fp8'", "'bf16'"]),
        (
            ["--model.preset", "tiny-lama"],
            ["unknown model preset 'tiny-lama'; did you mean 'tiny-llama'?"],
        ),
        (["--config", "nope"], ["config 'nope' is neither a file nor a shipped config"]),
    ],
    ids=["unknown-flag", "wrong-type", "bad-choice", "bad-preset", "bad-config-name"],
)
def test_argument_errors_are_one_line(tmp_path, args, fragments):
    result = run_cli("train", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, *fragments)
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        (
            "[model]\nnum_layer = 3\n",
            ["unknown config key 'model.num_layer'; did you mean 'model.num_layers'?"],
        ),
        ('[train]\nmax_steps = "ten"\n', ["train.max_steps must be int, got str 'ten'"]),
        ('[optim]\nschedule = "step"\n', ["optim.schedule = 'step' is not one of 'cosine'"]),
        ("[train\n", ["is not valid TOML"]),
    ],
    ids=["unknown-key", "wrong-type", "bad-literal", "bad-syntax"],
)
def test_bad_config_file_is_one_line(tmp_path, toml, fragments):
    (tmp_path / "run.toml").write_text(toml)
    result = run_cli("train", "--config", "run.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "run.toml", *fragments)


def test_heads_that_do_not_divide_the_width(tmp_path, corpus_file, byte_data_dir):
    args = tiny_train_args(corpus_file, byte_data_dir, tmp_path / "run", "--model.dim", "66")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "model.num_heads=4 does not divide model.dim=66")
    assert not (tmp_path / "run").exists()


def test_tokenizer_vocab_larger_than_model_vocab(tmp_path, corpus_file, byte_data_dir):
    args = tiny_train_args(
        corpus_file, byte_data_dir, tmp_path / "run", "--model.vocab_size", "100"
    )
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(
        result.stderr, "model.vocab_size=100 is smaller than the tokenizer's 257 tokens"
    )
    assert "step " not in result.stdout  # caught before training starts
    assert not (tmp_path / "run").exists()


def test_resume_with_a_changed_model_shape(tmp_path, corpus_file, byte_data_dir, trained_run):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, symlinks=True)
    args = tiny_train_args(
        corpus_file, byte_data_dir, run_dir, "--resume", "--model.num_heads", "2"
    )
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(
        result.stderr,
        "--resume with a config that changes the model's shape (model.num_heads: 4 -> 2)",
    )


def test_existing_checkpoints_without_resume(tmp_path, corpus_file, byte_data_dir, trained_run):
    before = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    result = run_cli(*tiny_train_args(corpus_file, byte_data_dir, trained_run), cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "already holds checkpoints; pass --resume")
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == before


def test_sample_from_a_checkpoint_missing_its_weights(tmp_path, trained_run):
    broken = tmp_path / "broken"
    shutil.copytree((trained_run / "checkpoints" / "last").resolve(), broken)
    (broken / "model.safetensors").unlink()
    result = run_cli("sample", "--checkpoint", str(broken), "--prompt", "x", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "is incomplete (missing model.safetensors)")
    result = run_cli("sample", "--checkpoint", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "does not exist")


def test_prepare_non_utf8_through_the_cli(tmp_path):
    """Non-UTF-8 bytes are replaced and counted by default; --data.strict_utf8 refuses them."""
    (tmp_path / "latin.txt").write_bytes("Grüße aus Köln\n".encode("latin-1"))
    args = ("prepare", "--data.source", "latin.txt", "--data.tokenizer", "byte")
    lenient = run_cli(*args, "--data.dir", "lenient", cwd=tmp_path)
    assert lenient.returncode == 0, lenient.stderr
    assert "replaced 3 non-UTF-8 bytes" in lenient.stderr
    strict = run_cli(*args, "--data.dir", "strict", "--data.strict_utf8", cwd=tmp_path)
    assert strict.returncode == 2
    assert_one_line_error(strict.stderr, "latin.txt is not valid UTF-8")


def test_help_exits_zero(tmp_path):
    result = run_cli("train", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--model.num_layers" in result.stdout and "--train.max_steps" in result.stdout


def test_presets_through_the_entry_point(tmp_path):
    script = shutil.which("lmforge", path=str(Path(sys.executable).parent))
    assert script, "the lmforge console script is not installed next to this Python"
    result = subprocess.run([script, "presets"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "llama3-8b" in result.stdout and "8,030,261,248" in result.stdout


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_reduced_quickstart_end_to_end(tmp_path):
    """quickstart.toml (python-stdlib, BPE) made tiny: train, resume finished, sample, plot."""
    run_dir = tmp_path / "run"
    train_args = [
        "train",
        "--config",
        "quickstart",
        "--model.preset",
        "tiny-llama",
        "--data.vocab_size",
        "300",
        "--data.dir",
        str(tmp_path / "data"),
        "--train.out_dir",
        str(run_dir),
        "--train.max_steps",
        "6",
        "--train.seq_len",
        "64",
        "--train.micro_batch_size",
        "4",
        "--train.batch_tokens",
        "512",
        "--train.eval_interval",
        "3",
        "--train.eval_batches",
        "2",
        "--train.checkpoint_interval",
        "3",
        "--train.log_interval",
        "2",
        "--train.peak_tflops",
        "1",
        "--logging.no_progress_bar",
    ]
    result = run_cli(*train_args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "batch 512 tokens = 4 x 64 x 1 ranks x 2 accumulation" in result.stdout
    assert "done: step 6, val loss " in result.stdout
    checkpoint = (run_dir / "checkpoints" / "last").resolve()
    assert checkpoint.name == "step-0000006"
    assert (checkpoint / "tokenizer.json").is_file()  # BPE travels with the checkpoint
    index = (tmp_path / "data" / "index.json").read_text()
    assert '"vocab_size": 300' in index and '"source": "python-stdlib"' in index

    # Resuming a finished run is a clean no-op.
    result = run_cli(*train_args, "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: step 6, val loss n/a" in result.stdout

    result = run_cli(
        "sample",
        "--checkpoint",
        str(run_dir),
        "--prompt",
        "def ",
        "--max_new_tokens",
        "20",
        "--no_stop_at_end_of_text",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("def ") and len(result.stdout.strip()) > len("def ")

    result = run_cli("plot", str(run_dir), "--out", str(tmp_path / "curve.png"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
