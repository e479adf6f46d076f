"""`lmforge plan`: a table with one line per layout and the fastest layout that fits, a one-line
refusal when none does, and one-line errors for bad input."""

from __future__ import annotations

import pytest
from conftest import assert_one_line_error

from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.parallel import plan_report
from lmforge.parallel.plan_command import parse_memory

LLAMA_8B = ["--model.preset", "llama3-8b", "--train.seq_len", "8192", "--train.micro_batch_size"]


def test_prints_a_table_and_the_fastest_layout_that_fits(capsys) -> None:
    args = [*LLAMA_8B, "1", "--train.batch_tokens", "65536"]
    assert main(["plan", *args, "--nproc-per-node", "8", "--gpu-memory", "80GiB"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("8,030,261,248 parameters, bf16, adamw, micro-batch 1 x 8192")
    assert "8 ranks (1 x 8); budget 80.00 GiB per rank (--gpu-memory)" in lines[0]
    rows = [line.split() for line in lines[2:23]]
    assert [row[:2] for row in rows] == [
        [name, mode]
        for name in ("ddp", "zero1", "fsdp", "fsdp+tp2", "fsdp+tp4", "fsdp+tp8", "fsdp+offload")
        for mode in ("none", "selective", "full")
    ]
    assert all(len(row) == 9 for row in rows)  # 7 numbers, host memory last
    assert lines[-1].startswith("fastest layout that fits: fsdp, activation checkpointing ")
    assert lines[-1].endswith(
        "--parallel.strategy fsdp --parallel.activation_checkpointing selective"
    )


def test_ddp_when_the_model_is_small(capsys) -> None:
    assert main(["plan", "--config", "tiny", "--nproc-per-node", "2", "--gpu-memory", "24GB"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("fastest layout that fits: ddp, activation checkpointing none (")
    assert last.endswith("of 22.35 GiB per rank): --parallel.strategy ddp")


def test_cpu_budget_is_host_memory_shared_by_the_ranks(capsys, monkeypatch) -> None:
    monkeypatch.setattr(plan_report.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(plan_report, "host_memory_available", lambda: 16 * 2**30)
    assert main(["plan", "--config", "tiny", "--nproc-per-node", "4", "--nnodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "8 ranks (2 x 4); budget 4.00 GiB per rank (host MemAvailable / 4 ranks per node)" in out
    assert "offload" not in out  # the host is the device: nothing to offload to


def test_gpu_budget_is_the_visible_gpu(capsys, monkeypatch) -> None:
    cuda = plan_report.torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "mem_get_info", lambda device: (30 * 2**30, 40 * 2**30))
    monkeypatch.setattr(cuda, "get_device_name", lambda device: "Test GPU")
    assert main(["plan", "--config", "tiny", "--nproc-per-node", "8"]) == 0
    out = capsys.readouterr().out
    assert "bf16" in out and "budget 40.00 GiB per rank (Test GPU)" in out
    assert "fsdp+offload" in out


def test_refuses_in_one_line_and_says_how_many_ranks_would_do(capsys, monkeypatch) -> None:
    monkeypatch.setattr(plan_report.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(plan_report, "host_memory_available", lambda: 16 * 2**30)
    args = ["plan", *LLAMA_8B, "1", "--train.seq_len", "2048", "--train.batch_tokens", "2048"]
    assert main(args) == 2
    captured = capsys.readouterr()
    line = assert_one_line_error(captured.err, "nothing fits", "GiB per rank; 16.00 GiB available")
    assert "ddp" in captured.out  # the table still shows why
    ranks = int(line.split("fsdp with full checkpointing fits at ")[1].split(" ranks")[0])
    assert main([*args, "--nnodes", str(ranks)]) == 0  # one rank per node: each has 16 GiB
    assert capsys.readouterr().out.splitlines()[-1].startswith("fastest layout that fits: fsdp, ")
    assert main([*args, "--nnodes", str(ranks - 1)]) == 2


def test_refuses_when_no_number_of_ranks_is_enough(capsys) -> None:
    # a micro-batch whose activations alone exceed the GPU: sharding cannot help
    args = [*LLAMA_8B, "64", "--train.batch_tokens", str(64 * 8192 * 8)]
    assert main(["plan", *args, "--nproc-per-node", "8", "--gpu-memory", "80GiB"]) == 2
    assert_one_line_error(capsys.readouterr().err, "no number of ranks is enough")
    # a 70 TB model: the embedding and head FSDP keeps gathered already exceed the GPU
    huge = ["--model.dim", "1048576", "--model.vocab_size", "16777216", "--model.num_heads", "8"]
    assert main(["plan", *huge, "--nproc-per-node", "8", "--gpu-memory", "80GiB"]) == 2
    assert_one_line_error(capsys.readouterr().err, "TiB per rank; 80.00 GiB available")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--nproc-per-node", "0"], "--nproc-per-node must be >= 1, got 0"),
        (["--nnodes", "-1"], "--nnodes must be >= 1, got -1"),
        (["--gpu-memory", "abc"], "--gpu-memory='abc' is not a memory size"),
        (["--gpu-memory", "nan"], "--gpu-memory='nan' is not a memory size"),
        (["--gpu-memory", "-5GiB"], "--gpu-memory='-5GiB' is not a memory size"),
        (["--gpu-memory", "0"], "--gpu-memory='0' is not a memory size"),
        (["--gpu-memory", "80 parsecs"], "is not a memory size"),
        (["--nproc-per-node", "two"], "nproc"),
        (["--train.micro_batch_size", "0"], "train.micro_batch_size must be >= 1"),
        (["--model.vocab_size", "-3"], "model.vocab_size must be in [1,"),
    ],
)
def test_bad_input_is_a_one_line_error(args: list[str], fragment: str, capsys) -> None:
    assert main(["plan", "--config", "tiny", *args]) == 2
    assert_one_line_error(capsys.readouterr().err, fragment)


def test_a_vocabulary_it_cannot_know_is_a_one_line_error(capsys) -> None:
    assert main(["plan", "--config", "tiny", "--data.tokenizer", "cl100k_base"]) == 2
    assert_one_line_error(capsys.readouterr().err, "pass --model.vocab_size N")


def test_memory_sizes() -> None:
    assert parse_memory("80GiB") == 80 * 2**30
    assert parse_memory("24 GB") == 24 * 10**9
    assert parse_memory("1.5tib") == int(1.5 * 2**40)
    assert parse_memory("80") == 80 * 2**30  # GPUs are sold in GiB
    assert parse_memory("512M") == 512 * 2**20
    for bad in ("", "GiB", "inf", "1e400GiB", "-1", "1.2.3GiB", "80 GiBs"):
        with pytest.raises(ConfigError):
            parse_memory(bad)
