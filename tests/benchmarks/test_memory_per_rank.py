"""benchmarks/memory_per_rank.py: its dry run (a tiny model, 2 gloo ranks) measures every rank's
peak RSS and puts the planner's estimate beside it, so the script cannot rot between runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_per_rank.py"


@pytest.mark.slow
def test_dry_run_measures_each_rank_beside_the_planner(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--dry-run", "--json", str(tmp_path / "peaks.json"),
               "--work", str(tmp_path / "work")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| fsdp | 2 |" in done.stdout
    (row,) = json.loads((tmp_path / "peaks.json").read_text())["rows"]
    assert (row["strategy"], row["ranks"]) == ("fsdp", 2)
    assert sorted(peak["rank"] for peak in row["per_rank"]) == [0, 1]
    for peak in row["per_rank"]:
        # a tiny model: the process itself is the whole of it, and the planner's overhead term
        assert 0 < peak["after_setup"] <= peak["after_steps"]
        assert 0.5 < peak["after_steps"] / row["planner"] < 1.5
