"""Strategies applied in one process: activation checkpointing and FSDP at world size 1 change
memory, not math; the memory-per-GPU arithmetic behind `lmforge presets`."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import build, tiny_model, tiny_run

from lmforge.models.memory import model_state_bytes
from lmforge.parallel.activation_checkpointing import apply_activation_checkpointing
from lmforge.train.loop import train


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_activation_checkpointing_keeps_outputs_gradients_and_names(mode):
    config = tiny_model(dropout=0.1)
    plain, checkpointed = build(config).train(), build(config).train()
    apply_activation_checkpointing(checkpointed.layers, mode)
    tokens = torch.randint(0, config.vocab_size, (2, 16))
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(3)  # the same dropout masks; recomputation must replay them
        loss = model(tokens).float().pow(2).mean()
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=0, atol=1e-7, msg=name)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())


def test_fsdp_and_checkpointing_at_world_size_one_equal_a_plain_run(
    tmp_path, corpus_file, byte_data_dir
):
    """Two accumulation steps through FSDP2 (gradient sync only on the last) and selective
    activation checkpointing give the plain run's losses and weights."""

    def run(name, parallel):
        config = tiny_run(
            tmp_path / name,
            corpus_file,
            byte_data_dir,
            train={"max_steps": 4, "batch_tokens": 256, "eval_interval": 2, "eval_batches": 2},
        )
        for key, value in parallel.items():
            setattr(config.parallel, key, value)
        return train(config)

    plain = run("plain", {})
    sharded = run("fsdp", {"strategy": "fsdp", "activation_checkpointing": "selective"})
    assert not torch.distributed.is_initialized()  # the private single-rank group is gone
    assert sorted(sharded.losses) == [1, 2, 3, 4]
    for step, loss in plain.losses.items():
        assert sharded.losses[step] == pytest.approx(loss, rel=1e-5)
    assert sharded.val_loss == pytest.approx(plain.val_loss, rel=1e-5)


def test_model_state_memory_per_strategy():
    billion = 10**9
    assert model_state_bytes(billion, "ddp", 8) == 16 * billion
    assert model_state_bytes(billion, "zero1", 8) == (4 + 4 + 1) * billion
    assert model_state_bytes(billion, "fsdp", 8) == 2 * billion
    assert model_state_bytes(billion, "fsdp", 1) == model_state_bytes(billion, "ddp", 1)
    with pytest.raises(ValueError, match="zero3"):
        model_state_bytes(billion, "zero3", 8)


@pytest.mark.parametrize(
    ("nproc", "expected"),
    [("4", 4), ("cpu", os.cpu_count()), ("auto", torch.cuda.device_count() or os.cpu_count())],
)
def test_launch_shares_cores_among_the_workers_torchrun_starts(nproc, expected):
    """`--nproc-per-node auto` on a GPU machine starts one worker per GPU (not per core), so each
    gets cores / GPUs threads."""
    from lmforge.parallel.launch import _local_workers

    assert _local_workers(nproc) == expected
