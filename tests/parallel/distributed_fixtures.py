"""Helpers for multi-process tests: a tiny run config file, launching ranks, comparing runs.

Every run here is a real `python -m lmforge` process (launched ranks go through torchrun's
machinery via `lmforge launch`), with a timeout so that a hang fails instead of blocking CI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

TIMEOUT = 180
STEPS = 10


def write_config(path: Path, source: Path, data_dir: Path, **train) -> Path:
    """tiny-llama, byte tokens, fp32, 2 x 4 x 32-token micro-batches per step (one per rank at 2
    ranks, two accumulation steps at 1), a checkpoint and a val loss every 5 steps."""
    settings = {
        "max_steps": STEPS,
        "seq_len": 32,
        "micro_batch_size": 4,
        "batch_tokens": 256,
        "dtype": "fp32",
        "device": "cpu",
        "peak_tflops": 1.0,
        "log_interval": 1,
        "eval_interval": 5,
        "eval_batches": 3,
        "checkpoint_interval": 5,
        "keep_checkpoints": 5,
    } | train
    lines = [
        "[model]",
        'preset = "tiny-llama"',
        "[data]",
        f'source = "{source}"',
        'tokenizer = "byte"',
        f'dir = "{data_dir}"',
        "[optim]",
        "lr = 3e-3",
        "min_lr = 3e-4",
        "warmup_steps = 2",
        "[train]",
        *(f"{key} = {json.dumps(value)}" for key, value in settings.items()),
        "[logging]",
        "progress_bar = false",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def run_single(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lmforge", *args]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, env=_env()
    )


def launch_command(*args: str, nproc: int = 2, rendezvous: list[str] | None = None) -> list[str]:
    rendezvous = rendezvous or ["--standalone"]
    return [
        sys.executable, "-m", "lmforge", "launch", *rendezvous,
        f"--nproc-per-node={nproc}", *args,
    ]  # fmt: skip


def run_launched(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(
        launch_command(*args, nproc=nproc),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(),
    )


def popen_launched(
    *args: str, cwd: Path, log: Path, nproc: int = 2, rendezvous: list[str] | None = None
) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 (the child writes to it for its whole life)
    command = launch_command(*args, nproc=nproc, rendezvous=rendezvous)
    return subprocess.Popen(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, env=_env())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def step_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def val_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in records if "val_loss" in r}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "last" / "model.safetensors")


def assert_same_run(run: Path, reference: Path, tolerance: float = 1e-5) -> None:
    """Per-step losses equal within `tolerance` relative; final weights within `tolerance`."""
    losses, expected = step_losses(run), step_losses(reference)
    assert sorted(losses) == sorted(expected) == list(range(1, len(expected) + 1))
    for step, loss in expected.items():
        assert abs(losses[step] - loss) <= tolerance * abs(loss), (step, losses[step], loss)
    for step, loss in val_losses(reference).items():
        assert abs(val_losses(run)[step] - loss) <= tolerance * abs(loss), step
    weights, reference_weights = final_weights(run), final_weights(reference)
    assert sorted(weights) == sorted(reference_weights)
    for name, tensor in reference_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=tolerance, atol=tolerance)
