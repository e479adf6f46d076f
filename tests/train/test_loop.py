"""The training loop: overfitting one batch, exact resume, init_from, and its config checks."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import safetensors.torch
import torch
from conftest import tiny_run

from lmforge.checkpoint import directory as ckpt
from lmforge.config import load_run_config
from lmforge.errors import CheckpointError, ConfigError
from lmforge.parallel.safe_reader import SafeReader
from lmforge.parallel.sharded_state import SHARDED_DIR
from lmforge.tokenizer import ByteTokenizer
from lmforge.train import setup
from lmforge.train.loop import accumulation_steps, resolve_vocab, train
from lmforge.train.metrics import read_metrics


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_overfit_one_batch_drives_loss_to_zero(tmp_path, corpus_file, byte_data_dir, preset):
    run = tiny_run(
        tmp_path / "run",
        corpus_file,
        byte_data_dir,
        model={"preset": preset},
        optim={"lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 10, "weight_decay": 0.0},
        train={"max_steps": 120, "overfit_one_batch": True, "log_interval": 10},
    )
    result = train(run)
    losses = result.losses
    assert sorted(losses) == list(range(10, 121, 10))
    assert losses[10] > 3.0  # it starts near ln(320) ~ 5.8 and must really learn
    assert losses[120] < 0.1, losses
    assert result.step == 120 and result.val_loss > 1.0  # memorised, not generalised


def resume_run(tmp_path, corpus_file, byte_data_dir, optimizer="adamw", **train_overrides):
    return tiny_run(
        tmp_path,
        corpus_file,
        byte_data_dir,
        model={"dropout": 0.1},  # exercises the RNG state too
        optim={"name": optimizer, "lr": 5e-3, "warmup_steps": 3, "embedding_lr": 2e-2},
        train={
            "max_steps": 20,
            "micro_batch_size": 2,  # 2 micro-batches per step: accumulation
            "eval_interval": 5,
            "eval_batches": 2,
            "checkpoint_interval": 10,
            **train_overrides,
        },
    )


def final_weights(run_dir):
    path = (run_dir / "checkpoints" / "last").resolve() / "model.safetensors"
    return safetensors.torch.load_file(str(path))


@pytest.mark.parametrize(
    ("dtype", "optimizer"), [("fp32", "adamw"), ("bf16", "adamw"), ("bf16", "muon")]
)
def test_resume_is_exact(tmp_path, corpus_file, byte_data_dir, monkeypatch, dtype, optimizer):
    def config(out_dir):
        return resume_run(out_dir, corpus_file, byte_data_dir, optimizer, dtype=dtype)

    straight = train(config(tmp_path / "straight"))
    assert sorted(straight.losses) == list(range(1, 21))

    # The interrupted run dies right after its step-10 checkpoint is written.
    original_prune = ckpt.prune_checkpoints

    def die_after_first_checkpoint(checkpoints, keep):
        original_prune(checkpoints, keep)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "prune_checkpoints", die_after_first_checkpoint)
    interrupted_dir = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(config(interrupted_dir))
    monkeypatch.undo()
    assert (interrupted_dir / "checkpoints" / "last").resolve().name == "step-0000010"

    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    resumed = train(config(interrupted_dir), resume=True)
    assert resumed.step == 20
    assert sorted(resumed.losses) == list(range(11, 21))
    for step in range(11, 21):
        assert resumed.losses[step] == straight.losses[step], step
    assert resumed.val_loss == straight.val_loss

    a, b = final_weights(tmp_path / "straight"), final_weights(interrupted_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

    # metrics.jsonl of the resumed run continues the interrupted one without a gap.
    records = read_metrics(interrupted_dir)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 21))
    straight_records = read_metrics(tmp_path / "straight")
    assert [r["loss"] for r in records if "loss" in r] == [
        r["loss"] for r in straight_records if "loss" in r
    ]


def test_interrupted_save_during_training_then_resume(
    tmp_path, corpus_file, byte_data_dir, monkeypatch
):
    run = tiny_run(
        tmp_path / "run",
        corpus_file,
        byte_data_dir,
        train={"max_steps": 6, "checkpoint_interval": 2, "keep_checkpoints": 1},
    )
    original_write = ckpt.write_checkpoint_files
    calls = []

    def write_then_crash_on_second(staging, *args, **kwargs):
        calls.append(staging.name)
        if len(calls) == 2:  # the optimizer shards are staged, the model files are not
            raise OSError("disk full")
        return original_write(staging, *args, **kwargs)

    monkeypatch.setattr(ckpt, "write_checkpoint_files", write_then_crash_on_second)
    with pytest.raises(
        CheckpointError,
        match="could not write checkpoint step-0000004 .disk full.; step-0000002 is intact",
    ):
        train(run)
    monkeypatch.undo()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "last").resolve().name == "step-0000002"
    assert not (checkpoints / "step-0000004.tmp").exists()  # the failed staging is cleaned up
    result = train(run, resume=True)
    assert result.step == 6 and sorted(result.losses) == [3, 4, 5, 6]
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["best", "last", "step-0000006"]  # keep 1 (best is the same step)


def test_outputs_of_a_run(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"checkpoints", "config.toml", "metrics.jsonl", "loss.png"} <= names
    assert (trained_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = load_run_config(str(trained_run / "config.toml"))
    assert config.model.vocab_size == 320  # resolved: 257 rounded up to a multiple of 64
    assert config.train.max_steps == 4
    records = read_metrics(trained_run)
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4]
    assert {"lr", "grad_norm", "tokens_per_s", "mfu", "tokens"} <= set(train_records[0])
    assert [r["tokens"] for r in train_records] == [128, 256, 384, 512]
    assert [r["step"] for r in records if "val_loss" in r] == [4]
    info = json.loads(((trained_run / "checkpoints" / "last") / "checkpoint.json").read_text())
    assert info["step"] == 4 and info["tokens_seen"] == 512
    assert info["val_loss"] == [r["val_loss"] for r in records if "val_loss" in r][0]
    assert (trained_run / "checkpoints" / "best").resolve().name == "step-0000004"


def test_init_from_copies_weights(tmp_path, corpus_file, byte_data_dir, trained_run):
    run = tiny_run(
        tmp_path / "child",
        corpus_file,
        byte_data_dir,
        optim={"lr": 0.0, "min_lr": 0.0},  # a zero learning rate keeps the weights
        train={"max_steps": 1},
    )
    train(run, init_from=str(trained_run))
    parent, child = final_weights(trained_run), final_weights(tmp_path / "child")
    for key in parent:
        assert torch.equal(parent[key], child[key]), key
    with pytest.raises(ConfigError, match="exclude each other"):
        train(
            dataclasses.replace(
                run, train=dataclasses.replace(run.train, out_dir=str(tmp_path / "x"))
            ),
            resume=True,
            init_from=str(trained_run),
        )


def test_existing_run_needs_resume_and_resume_needs_a_checkpoint(
    tmp_path, corpus_file, byte_data_dir, trained_run
):
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume"):
        train(tiny_run(trained_run, corpus_file, byte_data_dir))
    with pytest.raises(CheckpointError, match="has no checkpoints; start without"):
        train(tiny_run(tmp_path / "fresh", corpus_file, byte_data_dir), resume=True)


def test_resume_with_a_different_shape_is_refused(
    tmp_path, corpus_file, byte_data_dir, trained_run
):
    run = tiny_run(trained_run, corpus_file, byte_data_dir, model={"num_layers": 3})
    with pytest.raises(
        ConfigError, match=r"changes the model's shape \(model\.num_layers: 2 -> 3\)"
    ):
        train(run, resume=True)


def test_resume_with_another_optimizer_is_refused(
    tmp_path, corpus_file, byte_data_dir, trained_run
):
    run = tiny_run(trained_run, corpus_file, byte_data_dir, optim={"name": "muon"})
    with pytest.raises(ConfigError, match="checkpoint holds 'adamw' state; resume with optim.name"):
        train(run, resume=True)


def test_muon_run_learns(tmp_path, corpus_file, byte_data_dir):
    run = tiny_run(
        tmp_path / "run",
        corpus_file,
        byte_data_dir,
        optim={"name": "muon", "muon_lr": 0.05, "lr": 1e-2, "warmup_steps": 3},
        train={"max_steps": 30, "log_interval": 10},
    )
    result = train(run)
    assert result.losses[30] < result.losses[10] - 0.5, result.losses  # starts near ln(320)
    metadata = SafeReader(tmp_path / "run" / "checkpoints" / "last" / SHARDED_DIR).read_metadata()
    saved = set(metadata.state_dict_metadata)
    assert "optimizer.layers.0.attn.qkv.weight.momentum_buffer" in saved
    assert "optimizer.token_embedding.weight.exp_avg" in saved


def test_resume_of_a_finished_run_is_a_no_op(tmp_path, corpus_file, byte_data_dir, trained_run):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy, symlinks=True)
    result = train(tiny_run(copy, corpus_file, byte_data_dir), resume=True)
    assert result.step == 4 and result.losses == {} and result.val_loss is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train": {"max_steps": 0}}, "train.max_steps must be >= 1"),
        ({"train": {"seq_len": 256}}, "train.seq_len=256 exceeds model.context_length=128"),
        (
            {"train": {"batch_tokens": 100}},
            r"not a multiple of .* = 128; use e\.g\. batch_tokens=128",
        ),
        (
            {"model": {"vocab_size": 200}},
            "model.vocab_size=200 is smaller than the tokenizer's 257",
        ),
        ({"model": {"dim": 66}}, "does not divide model.dim=66"),
        ({"train": {"dtype": "fp16"}}, "fp16' needs a CUDA GPU"),
        ({"train": {"device": "cuda"}}, "no CUDA GPU is visible"),
    ],
)
def test_bad_settings_fail_before_training(
    tmp_path, corpus_file, byte_data_dir, monkeypatch, overrides, message
):
    monkeypatch.setattr(setup, "Transformer", None)  # training must not get as far as the model
    if overrides.get("train", {}).get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    run = tiny_run(tmp_path / "run", corpus_file, byte_data_dir, **overrides)
    with pytest.raises(ConfigError, match=message):
        train(run)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resolve_vocab_and_accumulation():
    run = tiny_run("r", "c", "d")
    assert resolve_vocab(run, ByteTokenizer()).model.vocab_size == 320
    exact = dataclasses.replace(run, model=dataclasses.replace(run.model, vocab_size=257))
    assert resolve_vocab(exact, ByteTokenizer()).model.vocab_size == 257
    assert accumulation_steps(run, 32) == 1
    four = dataclasses.replace(run, train=dataclasses.replace(run.train, batch_tokens=512))
    assert accumulation_steps(four, 32) == 4
    assert accumulation_steps(four, 32, world_size=2) == 2


def test_moe_training_adds_the_balancing_loss_and_logs_expert_load(
    tmp_path, corpus_file, byte_data_dir
):
    """The aux loss reaches the gradients (the router learns differently with it), the logged
    loss is the LM loss alone, and the expert load is logged at every log step."""

    def run(name, coefficient):
        config = tiny_run(
            tmp_path / name,
            corpus_file,
            byte_data_dir,
            model={"preset": "tiny-mixtral", "moe_aux_loss_coef": coefficient},
            train={"max_steps": 3},
        )
        return train(config)

    plain, balanced = run("plain", 0.0), run("balanced", 1.0)
    assert plain.losses[1] == pytest.approx(balanced.losses[1], rel=1e-6)  # same LM loss at step 1
    assert plain.losses[3] != pytest.approx(balanced.losses[3], rel=1e-6)  # different updates
    records = [r for r in read_metrics(tmp_path / "balanced") if "loss" in r]
    assert all(r["moe/load_cv"] >= 0.0 and 0 < r["moe/max_load/layer0"] <= 1 for r in records)
