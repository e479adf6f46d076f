"""Faults injected into real training processes: kill -9 at any moment (also at every stage of a
checkpoint write), SIGTERM, Ctrl-C twice. Resuming afterwards must give, bitwise on CPU, the
final weights of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_run
from safetensors.torch import load_file

from lmforge.config import dump_toml

RUNNER = Path(__file__).with_name("fault_runner.py")
TIMEOUT = 120
POINTS = ["staged", "sharded-written", "files-written", "manifest-written", "renamed"]


def write_config(directory: Path, corpus_file, byte_data_dir, **train) -> Path:
    settings = {"max_steps": 12, "checkpoint_interval": 4, "eval_interval": 6, "eval_batches": 2}
    run = tiny_run(directory / "unused", corpus_file, byte_data_dir, train=settings | train)
    path = directory / f"run-{len(list(directory.glob('run-*.toml')))}.toml"
    dump_toml(run, path)
    return path


def lmforge(*args: str, cwd: Path, runner: list[str] | None = None) -> subprocess.Popen:
    command = [sys.executable, *(runner or ["-m", "lmforge"]), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=TIMEOUT)
    return process.returncode, out, err


def train_args(config: Path, out_dir: str, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--train.out_dir", out_dir, *extra]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "last" / "model.safetensors")


def assert_bitwise_equal(run_dir: Path, reference: Path) -> None:
    got, expected = weights(run_dir), weights(reference)
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def start_and_wait(config: Path, out: str, directory: Path, step: int) -> subprocess.Popen:
    """Start a training process and return once it has logged `step` (failing if it exits)."""
    process = lmforge(*train_args(config, out), cwd=directory)
    deadline = time.monotonic() + TIMEOUT
    while logged_step(directory / out) < step and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)
    return process


def logged_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(line)["step"] for line in lines if line.strip()), default=0)


@pytest.fixture(scope="module")
def fast(tmp_path_factory, corpus_file, byte_data_dir):
    """A 12-step run (checkpoints at 4, 8, 12) and its uninterrupted result."""
    directory = tmp_path_factory.mktemp("faults")
    config = write_config(directory, corpus_file, byte_data_dir)
    code, _, err = finish(lmforge(*train_args(config, "reference"), cwd=directory))
    assert code == 0, err
    return directory, config


@pytest.fixture(scope="module")
def slow(tmp_path_factory, corpus_file, byte_data_dir):
    """24 heavier steps (16 micro-batches each), slow enough to be interrupted from outside."""
    directory = tmp_path_factory.mktemp("slow-faults")
    config = write_config(directory, corpus_file, byte_data_dir, max_steps=24, batch_tokens=2048)
    code, _, err = finish(lmforge(*train_args(config, "reference"), cwd=directory))
    assert code == 0, err
    return directory, config


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_during_a_checkpoint_write_then_resume_is_bitwise_exact(fast, point):
    directory, config = fast
    out = f"killed-{point}"
    crashed = lmforge(point, "8", *train_args(config, out), cwd=directory, runner=[str(RUNNER)])
    code, _, err = finish(crashed)
    assert code == -signal.SIGKILL, err
    checkpoints = directory / out / "checkpoints"
    assert os.readlink(checkpoints / "last") == "step-0000004"  # `last` never broken
    code, out_text, err = finish(lmforge(*train_args(config, out, "--resume"), cwd=directory))
    assert code == 0, err
    # A write that finished (renamed) is resumed from; an unfinished one is never used.
    expected_start = 8 if point == "renamed" else 4
    assert f"at step {expected_start} (1 ranks)" in out_text
    assert_bitwise_equal(directory / out, directory / "reference")
    assert not list(checkpoints.glob("*.tmp"))


def test_kill_9_mid_training_then_resume_is_bitwise_exact(slow):
    directory, config = slow
    process = start_and_wait(config, "killed", directory, step=10)
    process.kill()
    assert finish(process)[0] == -signal.SIGKILL
    assert logged_step(directory / "killed") < 24
    code, out_text, err = finish(lmforge(*train_args(config, "killed", "--resume"), cwd=directory))
    assert code == 0, err
    assert_bitwise_equal(directory / "killed", directory / "reference")


def test_sigterm_saves_exits_zero_and_resumes_exactly(slow):
    directory, config = slow
    process = start_and_wait(config, "preempted", directory, step=6)
    process.send_signal(signal.SIGTERM)
    code, out_text, err = finish(process)
    assert code == 0, err
    stopped = int(out_text.split("stopped by SIGTERM at step ")[1].split(",")[0])
    assert 6 <= stopped < 24 and "--resume" in out_text
    last = directory / "preempted" / "checkpoints" / "last"
    assert os.readlink(last) == f"step-{stopped:07d}"
    code, out_text, err = finish(
        lmforge(*train_args(config, "preempted", "--resume"), cwd=directory)
    )
    assert code == 0, err
    assert f"at step {stopped} " in out_text
    assert_bitwise_equal(directory / "preempted", directory / "reference")


def test_a_second_ctrl_c_aborts_at_once(slow):
    directory, config = slow
    process = start_and_wait(config, "aborted", directory, step=4)
    process.send_signal(signal.SIGINT)
    time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)
    assert code == 130 and err.strip() == "interrupted", err
