"""benchmarks/time_to_loss.py's baseline side (nanoGPT's CPU recipe), run at a tiny length."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import nanogpt_baseline  # noqa: E402


@pytest.fixture
def one_thread():
    """Matmuls this small gain nothing from more threads, and lose much on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_schedule_is_nanogpts_warmup_then_cosine():
    lr = nanogpt_baseline.nanogpt_lr
    assert lr(0) == pytest.approx(1e-3 / 101)
    assert lr(99) == pytest.approx(1e-3 * 100 / 101)
    assert lr(100) == pytest.approx(1e-3)
    assert lr(1050) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr(2000) == pytest.approx(1e-4)
    assert lr(2500) == 1e-4


def test_baseline_learns_and_times_from_its_launch(shared_data, one_thread):
    launched = time.time() - 5.0  # as if its process had started 5 s ago
    data = shared_data / "tinyshakespeare" / "input.txt"
    result = nanogpt_baseline.train(data, max_iters=20, launched_at=launched, eval_batches=4)
    first, last = result["evals"]
    assert (first["iter"], last["iter"]) == (0, 20)
    assert first["val"] == pytest.approx(4.17, abs=0.15)  # ~ln(65): uniform over 65 characters
    assert last["val"] < first["val"] - 0.1
    assert 5.0 <= first["wall_s"] <= last["wall_s"]
    assert result["tokens_per_s"] > 0


def test_baseline_only_prints_one_table_without_lmforge(shared_data):
    script = BENCHMARKS / "time_to_loss.py"
    done = subprocess.run(
        [sys.executable, str(script), "--baseline-only", "--max-iters", "2", "--eval-batches", "1"],
        env={**os.environ, "LMFORGE_SHARED_DATA": str(shared_data), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "| machine |" in done.stdout
    assert "| baseline val loss by iter | 0: " in done.stdout
    assert "lmforge" not in done.stdout and "ratio" not in done.stdout


def test_ratio_verdicts():
    import time_to_loss

    def verdict(ours_wall: float, ours_val: float, base_wall: float, base_val: float) -> str:
        ours = {"wall_s": ours_wall, "val_loss": ours_val}
        base = {"evals": [{"wall_s": base_wall, "val": base_val}]}
        return time_to_loss.ratio_row(ours, base)[1]

    assert verdict(40, 1.85, 100, 1.87) == "0.40: met"
    assert verdict(60, 1.85, 100, 1.87) == "0.60: NOT met"
    assert verdict(40, 1.90, 100, 1.87).startswith("0.40: NOT met (lmforge ended above 1.88")
    assert verdict(40, 1.85, 100, 1.92).startswith("0.40: met (an upper bound")
