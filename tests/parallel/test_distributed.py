"""Scaling out does not change the math: 2 ranks (DDP, ZeRO-1, FSDP2; one node or two) equal one
process with 2 accumulation steps on the same global batch; checkpoints resume at another world
size; an elastic restart after a killed rank completes the run. CPU, gloo, real processes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, rewind
from distributed_fixtures import (
    TIMEOUT,
    assert_same_run,
    check,
    final_weights,
    free_port,
    popen_launched,
    run_launched,
    run_single,
    step_losses,
    write_config,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, corpus_file, byte_data_dir) -> Path:
    directory = tmp_path_factory.mktemp("distributed")
    write_config(directory / "run.toml", corpus_file, byte_data_dir)
    return directory


def train_args(out_dir: str, *extra: str) -> list[str]:
    return ["train", "--config", "run.toml", "--train.out_dir", out_dir, *extra]


@pytest.fixture(scope="module")
def single(workdir) -> Path:
    """The reference: one process, two accumulation steps per optimizer step."""
    check(run_single(*train_args("single"), cwd=workdir))
    return workdir / "single"


@pytest.fixture(scope="module")
def fsdp_run(workdir) -> Path:
    check(run_launched(*train_args("fsdp", "--parallel.strategy", "fsdp"), cwd=workdir))
    return workdir / "fsdp"


@pytest.mark.parametrize("strategy", ["ddp", "zero1"])
def test_two_ranks_equal_one_process_with_accumulation(workdir, single, strategy):
    result = check(
        run_launched(*train_args(strategy, "--parallel.strategy", strategy), cwd=workdir)
    )
    assert "2 ranks x 1 accumulation" in result.stdout
    assert result.stdout.count("done: step 10") == 1  # rank 0 alone prints
    assert_same_run(workdir / strategy, single, tolerance=1e-6)


def test_muon_at_two_ranks_equals_one_process(workdir):
    """Muon with DDP: every rank orthogonalises the same averaged gradients."""
    muon = ("--optim.name", "muon")
    check(run_single(*train_args("muon-single", *muon), cwd=workdir))
    check(run_launched(*train_args("muon-ddp", *muon, "--parallel.strategy", "ddp"), cwd=workdir))
    assert_same_run(workdir / "muon-ddp", workdir / "muon-single")


def test_fsdp_two_ranks_equal_one_process(single, fsdp_run):
    assert_same_run(fsdp_run, single, tolerance=1e-6)
    # Its optimizer state was written as two shards (one file per rank).
    shards = sorted(p.name for p in (fsdp_run / "checkpoints" / "last" / "sharded_state").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]


def test_two_nodes_on_loopback_equal_one_process(workdir, single):
    """Two launches with --nnodes 2 (one rank each) meet at a c10d rendezvous, like two machines."""
    port = free_port()
    rendezvous = [
        "--nnodes=2",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=loopback",
    ]
    nodes = [
        popen_launched(
            *train_args("two-nodes"),
            cwd=workdir,
            log=workdir / f"node{i}.log",
            nproc=1,
            rendezvous=rendezvous,
        )  # fmt: skip
        for i in range(2)
    ]
    codes = [node.wait(timeout=TIMEOUT) for node in nodes]
    assert codes == [0, 0], [(workdir / f"node{i}.log").read_text()[-2000:] for i in range(2)]
    assert_same_run(workdir / "two-nodes", single)


def test_fsdp_checkpoint_at_two_ranks_resumes_at_one(workdir, single, fsdp_run):
    resumed = rewind(fsdp_run, workdir / "fsdp-to-one", step=5)
    result = check(run_single(*train_args("fsdp-to-one", "--resume"), cwd=workdir))
    assert "resumed from" in result.stdout and "at step 5 (1 ranks)" in result.stdout
    assert_same_run(resumed, single)


def test_single_process_checkpoint_resumes_at_two_ranks(workdir, single):
    resumed = rewind(single, workdir / "one-to-two", step=5)
    args = train_args("one-to-two", "--resume", "--parallel.strategy", "zero1")
    result = check(run_launched(*args, cwd=workdir))
    assert "at step 5 (2 ranks)" in result.stdout
    assert_same_run(resumed, single)


def test_elastic_restart_after_a_killed_rank_completes_the_run(workdir):
    """kill -9 one rank mid-run: torchrun (--max-restarts 1) restarts the group, which resumes
    from the last checkpoint and finishes with the weights of an uninterrupted run."""
    steps = ["--train.max_steps", "60", "--train.eval_interval", "30"]
    check(run_single(*train_args("elastic-reference", *steps), cwd=workdir))
    log = workdir / "elastic.log"
    launcher = popen_launched(
        "--max-restarts=1", *train_args("elastic", *steps), cwd=workdir, log=log
    )
    checkpoint = workdir / "elastic" / "checkpoints" / "step-0000010"
    deadline = time.monotonic() + TIMEOUT
    while not checkpoint.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _children(launcher.pid)
    assert len(workers) == 2, log.read_text()
    os.kill(workers[-1], signal.SIGKILL)
    assert launcher.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert "resumed from" in output, output[-3000:]
    assert max(step_losses(workdir / "elastic")) == 60
    expected = final_weights(workdir / "elastic-reference")
    for name, tensor in final_weights(workdir / "elastic").items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-5)


def _children(pid: int) -> list[int]:
    """Worker processes of a launcher (Linux /proc), oldest first."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sorted(int(child) for child in children)


def test_global_batch_not_divisible_by_ranks_is_one_line(workdir):
    result = run_launched(*train_args("bad", "--train.batch_tokens", "384"), cwd=workdir)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "train.batch_tokens=384", "x ranks = 256")
    assert not (workdir / "bad" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--parallel.strategy", "zero3"], ["zero3", "parallel.strategy"]),
        (["--parallel.backend", "nccl"], ["parallel.backend='nccl'", "gloo"]),
        (["--parallel.cpu_offload"], ["parallel.cpu_offload", "fsdp"]),
        (["--parallel.strategy", "fsdp", "--train.dtype", "fp16"], ["fsdp", "bf16"]),
        (["--optim.name", "muon", "--parallel.strategy", "zero1"], ["muon", "zero1", "ddp"]),
    ],
)
def test_bad_parallel_settings_are_one_line_errors(workdir, flags, fragments):
    result = run_single(*train_args("bad-settings", *flags), cwd=workdir)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, *fragments)


def test_resuming_a_sharded_checkpoint_with_another_shape_is_one_line(workdir, fsdp_run):
    rewind(fsdp_run, workdir / "reshaped", step=5)
    args = train_args("reshaped", "--resume", "--parallel.strategy", "fsdp", "--model.dim", "96")
    result = run_launched(*args, cwd=workdir)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "model.dim: 64 -> 96")


def test_consolidate_writes_the_full_model_from_fsdp_shards(workdir, fsdp_run, tmp_path):
    copy = rewind(fsdp_run, tmp_path / "copy", step=10)
    checkpoint = (copy / "checkpoints" / "last").resolve()
    (checkpoint / "model.safetensors").unlink()
    sample = run_single("sample", "--checkpoint", str(copy), cwd=workdir)
    assert sample.returncode == 2
    assert_one_line_error(sample.stderr, "lmforge consolidate --checkpoint")
    check(run_single("consolidate", "--checkpoint", str(copy), cwd=workdir))
    assert final_weights(copy).keys() == final_weights(fsdp_run).keys()
    for name, tensor in final_weights(fsdp_run).items():
        assert torch.equal(final_weights(copy)[name], tensor), name


def test_moe_with_aux_loss_free_balancing_at_two_ranks_equals_one_process(workdir):
    """Experts that get no tokens on a rank (unused parameters for DDP) and router biases updated
    from the load summed over ranks: still the single-process run."""
    moe = ["--model.preset", "tiny-deepseek", "--model.moe_aux_loss_coef", "0.01"]
    moe += ["--model.moe_bias_balancing"]
    check(run_single(*train_args("moe-single", *moe), cwd=workdir))
    check(run_launched(*train_args("moe-ddp", *moe), cwd=workdir))
    assert_same_run(workdir / "moe-ddp", workdir / "moe-single")
    biases = {k: v for k, v in final_weights(workdir / "moe-ddp").items() if "selection_bias" in k}
    assert biases and all(bias.abs().sum() > 0 for bias in biases.values())


def test_fsdp_checkpoint_resumes_at_two_ranks_with_fsdp(workdir, single, fsdp_run):
    """The sharded model and optimizer load into DTensor shards through the safe planner (its
    fill check counts each rank's local chunks)."""
    resumed = rewind(fsdp_run, workdir / "fsdp-to-fsdp", step=5)
    args = train_args("fsdp-to-fsdp", "--resume", "--parallel.strategy", "fsdp")
    result = check(run_launched(*args, cwd=workdir))
    assert "at step 5 (2 ranks)" in result.stdout
    assert_same_run(resumed, single)


@pytest.mark.parametrize("strategy", ["fsdp", "zero1"])
def test_four_ranks_equal_one_process(workdir, strategy):
    """4 ranks x 1 micro-batch of 2 against 1 process x 4 accumulation steps of 2. Gradients are
    the same sums added in another order (a 4-way all-reduce against 4 accumulated micro-batches),
    so fp32 rounding differs by a few ulps per step; over 10 AdamW steps that stays within 1e-6."""
    small = ("--train.micro_batch_size", "2")
    if not (workdir / "single-mb2").exists():
        check(run_single(*train_args("single-mb2", *small), cwd=workdir))
    args = train_args(f"{strategy}-4", *small, "--parallel.strategy", strategy)
    result = check(run_launched(*args, cwd=workdir, nproc=4))
    assert "4 ranks x 1 accumulation" in result.stdout
    assert_same_run(workdir / f"{strategy}-4", workdir / "single-mb2", tolerance=1e-6)
