"""Checkpoints: exact round trips, atomic saves, pruning, safe train-state loading."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from conftest import build, tiny_model

from lmforge.checkpoint import directory as ckpt
from lmforge.errors import CheckpointError
from lmforge.tokenizer import ByteTokenizer

V = 257


def trained_like(preset: str, seed: int = 0):
    """A model whose weights are all distinct (biases and norms too, not just the init)."""
    model = build(tiny_model(preset, vocab_size=V), seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


@pytest.mark.parametrize(("preset", "tied"), [("tiny-llama", False), ("tiny-gpt2", True)])
def test_save_load_round_trip_gives_identical_logits(tmp_path, preset, tied):
    model = trained_like(preset)
    assert model.config.tie_embeddings is tied
    info = {"step": 3, "tokens_seen": 99, "val_loss": 1.5}
    directory = ckpt.save_checkpoint(tmp_path / "step-0000003", model, ByteTokenizer(), info)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [
            "config.json",
            "model.safetensors",
            "lmforge_tokenizer.json",
            "checkpoint.json",
            "manifest.json",
        ]
    )
    loaded, tokenizer, found = ckpt.load_model(directory)
    assert found == directory and tokenizer.kind == "byte" and not loaded.training
    assert loaded.config == model.config
    tokens = torch.randint(0, V, (2, 24))
    assert torch.equal(loaded(tokens), model(tokens))
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert (loaded.lm_head.weight is loaded.token_embedding.weight) is tied
    with safetensors.safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert len(keys) == len(model.state_dict()) - int(tied)  # the tied tensor is stored once


def test_load_weights_rejects_a_different_shape(tmp_path):
    ckpt.save_checkpoint(tmp_path / "c", trained_like("tiny-llama"), ByteTokenizer(), {})
    other = build(tiny_model("tiny-llama", vocab_size=V, num_kv_heads=1))
    with pytest.raises(CheckpointError, match=r"layers\.0\.attn\.qkv\.weight is \(128, 64\)"):
        ckpt.load_weights(other, tmp_path / "c")
    deeper = build(tiny_model("tiny-llama", vocab_size=V, num_layers=3))
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.load_weights(deeper, tmp_path / "c")


def test_find_checkpoint_accepts_checkpoint_run_and_checkpoints_dirs(trained_run):
    last = (trained_run / "checkpoints" / "last").resolve()
    assert last.name == "step-0000004"
    assert ckpt.find_checkpoint(trained_run).resolve() == last
    assert ckpt.find_checkpoint(trained_run / "checkpoints").resolve() == last
    assert ckpt.find_checkpoint(last) == last


def test_find_checkpoint_errors(tmp_path, trained_run):
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.find_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        ckpt.find_checkpoint(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree((trained_run / "checkpoints" / "last").resolve(), broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete \(missing model\.safetensors\)"):
        ckpt.find_checkpoint(broken)
    (broken / "lmforge_tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors, lmforge_tokenizer.json"):
        ckpt.load_model(broken)


def test_load_train_state_without_state_file(tmp_path):
    ckpt.save_checkpoint(tmp_path / "c", trained_like("tiny-llama"), ByteTokenizer(), {})
    with pytest.raises(CheckpointError, match="--init_from"):
        ckpt.load_train_state(tmp_path / "c")


def save_step(checkpoints: Path, model, step: int, **state) -> None:
    name = f"step-{step:07d}"
    ckpt.save_checkpoint(checkpoints / name, model, ByteTokenizer(), {"step": step}, state or None)
    ckpt.point_link(checkpoints / "last", name)


def test_interrupted_save_never_breaks_last(tmp_path, monkeypatch):
    checkpoints = tmp_path / "run" / "checkpoints"
    first, second = trained_like("tiny-llama", seed=1), trained_like("tiny-llama", seed=2)
    save_step(checkpoints, first, 1)
    original = safetensors.torch.save_file

    def crash_after_staging(tensors, filename, *args, **kwargs):
        original(tensors, filename, *args, **kwargs)  # the weights are staged...
        raise KeyboardInterrupt  # ...and the process dies before the rename

    monkeypatch.setattr(safetensors.torch, "save_file", crash_after_staging)
    with pytest.raises(KeyboardInterrupt):
        save_step(checkpoints, second, 2)
    monkeypatch.undo()
    assert (checkpoints / "step-0000002.tmp").is_dir()  # the leftover staging directory
    assert not (checkpoints / "step-0000002").exists()
    assert os.readlink(checkpoints / "last") == "step-0000001"
    loaded, _, directory = ckpt.load_model(tmp_path / "run")
    assert directory.resolve().name == "step-0000001"
    tokens = torch.randint(0, V, (1, 8))
    assert torch.equal(loaded(tokens), first(tokens))
    # Pruning ignores the staging directory, and the next save of that step replaces it.
    ckpt.prune_checkpoints(checkpoints, keep=1)
    assert (checkpoints / "step-0000001").is_dir()
    save_step(checkpoints, second, 2)
    assert not (checkpoints / "step-0000002.tmp").exists()
    assert torch.equal(ckpt.load_model(tmp_path / "run")[0](tokens), second(tokens))


def test_leftover_link_tmp_does_not_break_point_link(tmp_path):
    (tmp_path / "step-0000001").mkdir()
    (tmp_path / "step-0000002").mkdir()
    ckpt.point_link(tmp_path / "last", "step-0000001")
    (tmp_path / "last.tmp").symlink_to("step-0000001")  # left by a crash mid-swap
    ckpt.point_link(tmp_path / "last", "step-0000002")
    assert os.readlink(tmp_path / "last") == "step-0000002"
    assert not (tmp_path / "last.tmp").exists()


def test_prune_keeps_newest_and_the_best_and_last_targets(tmp_path):
    for step in range(1, 8):
        (tmp_path / f"step-{step:07d}").mkdir()
    (tmp_path / "step-0000009.tmp").mkdir()
    ckpt.point_link(tmp_path / "best", "step-0000002")
    ckpt.point_link(tmp_path / "last", "step-0000007")
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best",
        "last",
        "step-0000002",
        "step-0000006",
        "step-0000007",
        "step-0000009.tmp",
    ]
    assert (tmp_path / "best").resolve().is_dir() and (tmp_path / "last").resolve().is_dir()
    ckpt.point_link(tmp_path / "last", "step-0000006")  # e.g. last moved back by a resume
    ckpt.prune_checkpoints(tmp_path, keep=0)
    assert sorted(p.name for p in tmp_path.glob("step-???????")) == ["step-0000002", "step-0000006"]


class Exploit:
    """Unpickling this runs a shell command (the classic torch.load attack)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_train_state_is_loaded_weights_only(tmp_path):
    ckpt.save_checkpoint(tmp_path / "c", trained_like("tiny-llama"), ByteTokenizer(), {})
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "payload": Exploit(marker)}, tmp_path / "c" / "train_state.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported global"):
        ckpt.load_train_state(tmp_path / "c")
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(tmp_path / "c" / "train_state.pt", weights_only=False)
    assert marker.exists()


def test_real_train_state_loads_with_weights_only(trained_run):
    directory = (trained_run / "checkpoints" / "last").resolve()
    state = ckpt.load_train_state(directory)
    seq_len = (
        state["run_config"]["train"]["seq_len"] or state["run_config"]["model"]["context_length"]
    )
    assert state["step"] == 4 and state["loader"]["rows_drawn"] * seq_len == 4 * 128
    assert state["tokens_seen"] == 4 * 128
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    assert state["run_config"]["model"]["preset"] == "tiny-llama"
    # The optimizer state lives beside it, as a torch.distributed.checkpoint directory.
    assert "optimizer" not in state and (directory / "sharded_state" / ".metadata").is_file()
