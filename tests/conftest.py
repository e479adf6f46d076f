"""Shared fixtures: small text corpora, tiny run configs, a trained tiny run, CLI helpers.

Everything is written under pytest's tmp directories; each test runs with its tmp_path as the
working directory so that relative defaults (data/, runs/) never land in the repository.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# Inductor's kernel cache is per test session (and its subprocesses): kernels cached by another
# run on this machine, e.g. one under ATEN_CPU_CAPABILITY=avx2 emulation, crashed a compiled
# decode test; a fresh CI machine starts empty anyway.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmforge-test-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

from lmforge.config import RunConfig, config_from_dict  # noqa: E402
from lmforge.models.config import ModelConfig
from lmforge.models.presets import model_preset

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "model",
    "tokens",
    "train",
    "loss",
    "step",
    "value",
    "alpha",
    "beta",
    "gamma",
    "delta",
    "import",
    "def",
    "return",
    "class",
    "self",
    "print",
    "for",
    "in",
    "if",
    "else",
]


def make_text(seed: int, lines: int = 200) -> str:
    """Deterministic pseudo-English text (about 60 characters a line)."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + ".")
    return "\n".join(out) + "\n"


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """One ~18 KB UTF-8 text file."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_text(0, 300))
    return path


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A directory of 8 small text documents (and one ignored binary file)."""
    directory = tmp_path_factory.mktemp("corpus_dir")
    for i in range(8):
        (directory / f"doc{i}.txt").write_text(make_text(100 + i, 20 + 5 * i))
    (directory / "ignored.bin").write_bytes(b"\x00\x01")
    return directory


def tiny_model(preset: str = "tiny-llama", vocab_size: int = 97, **overrides) -> ModelConfig:
    return model_preset(preset, vocab_size=vocab_size, **overrides)


def build(config: ModelConfig, seed: int = 0):
    from lmforge.models.transformer import Transformer

    torch.manual_seed(seed)
    return Transformer(config).eval()


def tiny_run(
    out_dir: Path,
    source: Path,
    data_dir: Path,
    *,
    model: dict | None = None,
    data: dict | None = None,
    optim: dict | None = None,
    train: dict | None = None,
) -> RunConfig:
    """A seconds-long run: tiny model, byte tokenizer, 4 x 32 token batches, fp32, no progress bar."""
    config = {
        "model": {"preset": "tiny-llama", **(model or {})},
        "data": {"source": str(source), "tokenizer": "byte", "dir": str(data_dir), **(data or {})},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, **(optim or {})},
        "train": {
            "out_dir": str(out_dir),
            "max_steps": 4,
            "seq_len": 32,
            "micro_batch_size": 4,
            "batch_tokens": 128,
            "dtype": "fp32",
            "device": "cpu",
            "peak_tflops": 1.0,  # skip the peak-FLOPs matmul benchmark
            "log_interval": 1,
            "eval_interval": 1000,
            "eval_batches": 1,
            "checkpoint_interval": 1000,
            **(train or {}),
        },
        "logging": {"progress_bar": False},
    }
    return config_from_dict(config)


@pytest.fixture(scope="session")
def byte_data_dir(tmp_path_factory, corpus_file) -> Path:
    """corpus_file prepared with the byte tokenizer (shared, read-only)."""
    from lmforge.config import DataConfig
    from lmforge.data.prepare import prepare

    directory = tmp_path_factory.mktemp("prepared") / "byte"
    config = DataConfig(source=str(corpus_file), tokenizer="byte", dir=str(directory))
    return prepare(config, progress=False)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_file, byte_data_dir) -> Path:
    """A finished 4-step tiny-llama run directory (shared, read-only: copy it to modify it)."""
    from lmforge.train.loop import train

    out_dir = tmp_path_factory.mktemp("runs") / "trained"
    train(tiny_run(out_dir, corpus_file, byte_data_dir))
    return out_dir


def rewind(run_dir: Path, copy: Path, step: int) -> Path:
    """A copy of a finished run whose `last` checkpoint is the one at `step` (as if it had been
    stopped there), with the later checkpoints and metrics removed."""
    shutil.copytree(run_dir, copy, symlinks=True)
    checkpoints = copy / "checkpoints"
    for later in checkpoints.glob("step-*"):
        if int(later.name.split("-")[1]) > step:
            shutil.rmtree(later)
    for link in ("last", "best"):
        (checkpoints / link).unlink(missing_ok=True)
        (checkpoints / link).symlink_to(f"step-{step:07d}")
    metrics = copy / "metrics.jsonl"
    kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= step]
    metrics.write_text("\n".join(kept) + "\n")
    return copy


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m lmforge ARGS` in a fresh process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """stderr is exactly one line, starts with 'error:', has no traceback, names each fragment."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Read-only reference data (pretrained tokenizers, corpora): $LMFORGE_SHARED_DATA, else
    <repo>/../shared/data. Missing data skips the test, or fails it where
    LMFORGE_REQUIRE_SHARED_DATA=1 (CI must not pass by skipping)."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    path = Path(os.environ.get("LMFORGE_SHARED_DATA") or default)
    if not path.is_dir():
        message = f"shared reference data not found at {path}; set LMFORGE_SHARED_DATA"
        if os.environ.get("LMFORGE_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path
