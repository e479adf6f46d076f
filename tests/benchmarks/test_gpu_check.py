"""benchmarks/gpu_check.py: its CPU dry run passes every stage and writes the JSON the GPU run
writes, so the script cannot rot between GPU sessions; a stage that fails or runs out of time
is reported and the next one still runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402
from gpu_stages.common import published_peak_tflops  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    work = tmp_path_factory.mktemp("gpu_check")
    command = [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--dry-run",
               "--json", str(work / "check.json"), "--work", str(work / "work")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    summary = json.loads((work / "check.json").read_text())
    return done, summary


@pytest.mark.slow
def test_dry_run_passes_every_stage(dry_run):
    done, summary = dry_run
    statuses = {stage["name"]: (stage["status"], stage["error"]) for stage in summary["stages"]}
    assert statuses == {name: ("ok", None) for name in gpu_check.STAGES}, done.stdout[-3000:]
    assert done.returncode == 0
    assert "| throughput-gpt2 | ok |" in done.stdout  # the printed table


@pytest.mark.slow
def test_dry_run_json_has_the_measurements(dry_run):
    _, summary = dry_run
    assert summary["dry_run"] is True and summary["device"] == summary["environment"]["device"]
    assert {"date", "total_s", "budget_s", "stages"} <= set(summary)
    stages = {stage["name"]: stage for stage in summary["stages"]}
    for stage in stages.values():
        assert {"results", "seconds", "limit_s"} <= set(stage) and stage["results"]
    correctness = stages["correctness"]["results"]
    assert correctness["cpu fp32 repeat identical"] is True
    for name in ("throughput-gpt2", "throughput-llama"):
        results = stages[name]["results"]
        assert results["tokens/s"] > 0 and results["AdamW"] == "fused"
        assert "_scaled_dot_product_flash_attention_for_cpu" in results["SDPA kernel"]
    assert "--parallel.strategy fsdp" in stages["throughput-llama"]["results"]["command"]
    memory = stages["activation-ckpt"]["results"]
    # The dry run's simulated out-of-memory above 4 sequences caps every mode's search there.
    assert [memory[f"{mode}: largest micro-batch"] for mode in ("none", "selective", "full")] == [
        4
    ] * 3
    for name in ("decode-smollm2", "decode-llama"):
        assert stages[name]["results"]["batch 4: decode tokens/s"] > 0
    nccl = stages["nccl"]["results"]
    assert {f"{s}: resumed vs uninterrupted max rel diff" for s in ("ddp", "zero1", "fsdp")} <= set(
        nccl
    )
    gloo = stages["gloo-2proc"]["results"]
    assert all(value.startswith("ok") for value in gloo.values()) and len(gloo) == 3


def test_a_stage_out_of_time_is_reported_and_the_next_still_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "DRY_RUN_LIMIT", 0.5)  # not even time to import torch
    reports = gpu_check.run_all(["environment", "decode-smollm2"], tmp_path, True, 60)
    assert [(r["name"], r["status"]) for r in reports] == [
        ("environment", "timeout"),
        ("decode-smollm2", "timeout"),
    ]
    assert "stopped at its 0 s limit" in reports[0]["error"]


def test_a_stage_that_raises_is_reported_as_failed(tmp_path, monkeypatch):
    # relative_difference(ctx) is a TypeError: a stage crashing on its first line.
    monkeypatch.setitem(gpu_check.STAGES, "broken", ("common:relative_difference", 5))
    gpu_check.run_stage_here("broken", tmp_path, tmp_path / "broken.json", True)
    outcome = json.loads((tmp_path / "broken.json").read_text())
    assert outcome["status"] == "failed" and outcome["error"].startswith("TypeError")


def test_skipped_when_the_budget_is_spent(tmp_path):
    reports = gpu_check.run_all(["environment"], tmp_path, False, budget=1)
    assert reports[0]["status"] == "skipped"


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.1),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GeForce RTX 3090", None),
    ],
)
def test_published_peaks_match_device_names(name, tflops):
    assert published_peak_tflops(name) == tflops
