"""SFT with LoRA at 2 ranks (DDP, gloo, real processes) equals one process with 2 accumulation
steps on the same global batch: the same losses, val losses and adapters. So does tensor
parallelism at 2 ranks (one replica, 2 accumulation steps), with the adapters split beside their
linears."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from finetune_fixtures import alpaca_file, finetune_toml, tiny_base  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parallel"))
from distributed_fixtures import check, run_launched, run_single, step_losses, val_losses  # noqa: E402

TENSOR_PARALLEL = ["--parallel.strategy", "fsdp", "--parallel.tensor_parallel", "2"]


@pytest.mark.parametrize(
    ("layout", "flags", "shown"),
    [("ddp", [], "2 ranks x 1 accumulation"), ("tp", TENSOR_PARALLEL, "1 ranks x 2 accumulation")],
)
def test_lora_sft_two_ranks_equal_one_process(
    tmp_path,
    tiny_base,  # noqa: F811
    alpaca_file,  # noqa: F811
    layout,
    flags,
    shown,
):
    sections = {"finetune": {"init_from": str(tiny_base), "lora": {"enabled": True}}}
    finetune_toml(tmp_path / "run.toml", "sft", alpaca_file, "unused", **sections)
    args = ["finetune", "sft", "--config", "run.toml", "--train.out_dir"]
    single = check(run_single(*args, "single", cwd=tmp_path))
    assert "1 ranks x 2 accumulation" in single.stdout
    launched = check(run_launched(*args, "ranks", *flags, cwd=tmp_path))
    assert shown in launched.stdout
    one, two = tmp_path / "single", tmp_path / "ranks"
    expected, got = step_losses(one), step_losses(two)
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    for step, loss in expected.items():
        assert abs(got[step] - loss) <= 1e-5 * abs(loss), (step, got[step], loss)
    for step, loss in val_losses(one).items():
        assert abs(val_losses(two)[step] - loss) <= 1e-5 * abs(loss), step
    adapters = "checkpoints/last/adapter_model.safetensors"
    reference = safetensors.torch.load_file(one / adapters)
    weights = safetensors.torch.load_file(two / adapters)
    assert sorted(weights) == sorted(reference)
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-5)
