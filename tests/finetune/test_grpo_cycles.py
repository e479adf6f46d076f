"""GRPO with mu > 1 (several optimizer steps per generation batch) and over DDP ranks.

With mu = 2 and 2 accumulation steps, step 1 samples and trains at ratio 1, step 2 trains on
the same rollouts against the kept old log-probs (ratio away from 1), and the loader draws
prompts only on the first step of a cycle. A checkpoint written mid-cycle holds the rollouts
of every rank: resuming from it repeats the uninterrupted run, in one process and on 2 ranks,
and resuming it on another number of ranks is refused in one line. 2 DDP ranks equal one
process with 2 accumulation steps (losses, held-out accuracy, adapters)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import rewind
from finetune_fixtures import tiny_base  # noqa: F401
from grpo_fixtures import arithmetic, grpo_run, grpo_toml, records  # noqa: F401

from lmforge.checkpoint.adapters import ADAPTER_FILE
from lmforge.checkpoint.directory import STATE_FILE
from lmforge.errors import CheckpointError
from lmforge.finetune.grpo_replay import Rollout, pack_rollouts, unpack_rollouts
from lmforge.finetune.run import finetune
from lmforge.parallel.dist import DistInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parallel"))
from distributed_fixtures import check, run_launched, run_single, step_losses, val_losses  # noqa: E402

MU_TWO = {"grpo": {"mu": 2}, "train": {"checkpoint_interval": 1}}


def test_mu_two_trains_twice_on_each_batch_and_resumes_mid_cycle(
    tmp_path,
    tiny_base,  # noqa: F811
    arithmetic,  # noqa: F811
):
    full = finetune(grpo_run(tmp_path, tiny_base, arithmetic, "full", **MU_TWO)).out_dir
    steps = {r["step"]: r for r in records(full) if "loss" in r}
    assert sorted(steps) == [1, 2, 3, 4]
    for sampled in (1, 3):  # the policy that sampled is the one trained: ratio 1
        assert steps[sampled]["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
        assert "reward/total/mean" in steps[sampled]
    for replayed in (2, 4):  # one optimizer step later, on the same rollouts
        assert abs(steps[replayed]["ratio_mean"] - 1.0) > 1e-4
        assert "reward/total/mean" not in steps[replayed]  # nothing was sampled
    state = torch.load(full / "checkpoints" / "last" / STATE_FILE, weights_only=True)
    assert state["loader"]["rows_drawn"] == 2 * 2 * 2  # 2 cycles x 2 micro-batches x 2 prompts
    mid = torch.load(full / "checkpoints" / "step-0000003" / STATE_FILE, weights_only=True)
    assert mid["objective"]["rollouts"]["shapes"].shape == (1, 2, 2)  # 1 rank, 2 micro-batches

    resumed = rewind(full, tmp_path / "resumed", 3)  # after step 3: mid-cycle
    finetune(grpo_run(tmp_path, tiny_base, arithmetic, "resumed", **MU_TWO), resume=True)
    again = {r["step"]: r["loss"] for r in records(resumed) if "loss" in r}
    assert again[4] == pytest.approx(steps[4]["loss"], rel=1e-5, abs=1e-7)


def rollout(rows: int, width: int, seed: int, reference: bool) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    return Rollout(
        torch.randint(0, 50, (rows, width), generator=g),
        torch.randint(-100, 50, (rows, width), generator=g),
        torch.randn(rows, width, generator=g),
        torch.randn(rows, width, generator=g) if reference else None,
        torch.randn(rows, generator=g),
    )


@pytest.mark.parametrize("reference", [True, False])
def test_rollouts_pack_and_unpack_exactly(reference):
    one = DistInfo(0, 0, 1, torch.device("cpu"), None)
    kept = [rollout(4, 9, 0, reference), rollout(3, 12, 1, reference)]  # uneven shapes
    packed = pack_rollouts(kept, one)
    assert all(isinstance(v, torch.Tensor) for v in packed.values())  # weights_only-loadable
    back = unpack_rollouts(packed, one, torch.device("cpu"), "step-3")
    for before, after in zip(kept, back, strict=True):
        for field in ("inputs", "targets", "old_logp", "ref_logp", "advantages"):
            expected, got = getattr(before, field), getattr(after, field)
            assert (got is None) if expected is None else torch.equal(got, expected), field


@pytest.mark.parametrize("packed", [{}, {"shapes": torch.zeros(2, 1, 2, dtype=torch.long)}])
def test_mid_cycle_rollouts_of_another_world_are_refused(packed):
    one = DistInfo(0, 0, 1, torch.device("cpu"), None)
    with pytest.raises(CheckpointError, match="in the middle of a GRPO generation batch") as error:
        unpack_rollouts(packed, one, torch.device("cpu"), "step-3")
    assert "\n" not in str(error.value)


def test_two_ranks_equal_one_process_and_resume_mid_cycle(
    tmp_path,
    tiny_base,  # noqa: F811
    arithmetic,  # noqa: F811
):
    for name in ("single", "ranks", "resumed", "other"):
        grpo_toml(tmp_path, tiny_base, arithmetic, name, **MU_TWO)
    single = check(run_single("finetune", "grpo", "--config", "single.toml", cwd=tmp_path))
    assert "1 ranks x 2 accumulation" in single.stdout
    launched = check(run_launched("finetune", "grpo", "--config", "ranks.toml", cwd=tmp_path))
    assert "2 ranks x 1 accumulation" in launched.stdout
    one, two = tmp_path / "single", tmp_path / "ranks"
    expected = step_losses(one)
    assert sorted(expected) == [1, 2, 3, 4] and any(abs(v) > 1e-6 for v in expected.values())
    assert step_losses(two) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert val_losses(two) == pytest.approx(val_losses(one), abs=1e-9)
    adapters = f"checkpoints/last/{ADAPTER_FILE}"
    reference = safetensors.torch.load_file(one / adapters)
    weights = safetensors.torch.load_file(two / adapters)
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-6)

    rewind(two, tmp_path / "resumed", 3)  # mid-cycle: both ranks' rollouts are in the checkpoint
    args = ("finetune", "grpo", "--config", "resumed.toml", "--resume")
    check(run_launched(*args, cwd=tmp_path))
    assert step_losses(tmp_path / "resumed")[4] == pytest.approx(expected[4], rel=1e-5, abs=1e-7)

    rewind(two, tmp_path / "other", 3)
    refused = run_single("finetune", "grpo", "--config", "other.toml", "--resume", cwd=tmp_path)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    assert "generation batch by 2 data ranks, and this run has 1" in refused.stderr
