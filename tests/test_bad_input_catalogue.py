"""The bad-input catalogue: every entry is a mistake a user makes, fed to the real CLI entry
point. Each must end in one line naming the problem and the fix, a non-zero exit, no traceback,
and every file that existed before left byte-for-byte intact. The number of entries is quoted in
the README's Reliability section."""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import shutil
from pathlib import Path

import pytest
from conftest import assert_one_line_error

from lmforge.cli import main
from lmforge.train import run_checkpoint
from lmforge.train.checkpoint import write_manifest

TINY = ["--model.preset", "tiny-llama", "--data.tokenizer", "byte", "--train.seq_len", "32"]
TINY += ["--train.micro_batch_size", "4", "--train.batch_tokens", "128", "--train.dtype", "fp32"]
TINY += ["--train.peak_tflops", "1", "--train.eval_batches", "1", "--logging.no_progress_bar"]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def world(tmp_path, corpus_file, byte_data_dir, trained_run):
    """A workspace holding data files and a copy of a finished run (everything snapshotted)."""
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    (tmp_path / "latin1.txt").write_bytes("naïve café".encode("latin-1"))
    (tmp_path / "run.toml").write_text("[model]\nnum_layer = 3\n")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    return {"tmp": tmp_path, "corpus": corpus_file, "data": byte_data_dir, "run": run}


def train(world, *extra: str, out: str | None = None) -> list[str]:
    source = ["--data.source", str(world["corpus"]), "--data.dir", str(world["data"])]
    out_dir = ["--train.out_dir", out or str(world["tmp"] / "new-run")]
    return ["train", *TINY, *source, *out_dir, "--train.max_steps", "2", *extra]


def last_checkpoint(world) -> Path:
    return (world["run"] / "checkpoints" / "last").resolve()


def truncate_weights(world) -> list[str]:
    path = last_checkpoint(world) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    return ["sample", "--checkpoint", str(world["run"]), "--prompt", "x"]


def truncate_weights_without_manifest(world) -> list[str]:
    (last_checkpoint(world) / "manifest.json").unlink()
    return truncate_weights(world)


def drop_tokenizer(world) -> list[str]:
    (last_checkpoint(world) / "lmforge_tokenizer.json").unlink()
    return ["sample", "--checkpoint", str(world["run"])]


def malicious_train_state(world) -> list[str]:
    import torch

    path = last_checkpoint(world) / "train_state.pt"
    torch.save({"payload": Exploit(world["tmp"] / "pwned")}, path)
    write_manifest(last_checkpoint(world))  # a forger can rewrite the checksums too
    return train(world, "--resume", out=str(world["run"]))


def malicious_shard_index(world) -> list[str]:
    path = last_checkpoint(world) / "sharded_state" / ".metadata"
    path.write_bytes(pickle.dumps(Exploit(world["tmp"] / "pwned")))
    write_manifest(last_checkpoint(world))
    return train(world, "--resume", out=str(world["run"]))


def full_disk(world, monkeypatch) -> list[str]:
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_checkpoint.ckpt, "write_checkpoint_files", no_space)
    return train(world, "--resume", "--train.max_steps", "6", out=str(world["run"]))


# id -> (arguments, or a function building them from the workspace; fragments of the message)
CATALOGUE = {
    "unknown-flag": (lambda w: train(w, "--model.num_layer", "3"), ["--model.num_layers"]),
    "unknown-toml-key": (
        lambda w: ["train", "--config", str(w["tmp"] / "run.toml")],
        ["unknown config key 'model.num_layer'; did you mean 'model.num_layers'?"],
    ),
    "wrong-type": (lambda w: train(w, "--train.max_steps", "ten"), ["--train.max_steps", "'ten'"]),
    "zero-width": (lambda w: train(w, "--model.dim", "0"), ["model.dim must be positive"]),
    "negative-batch": (
        lambda w: train(w, "--train.micro_batch_size", "-1"),
        ["train.micro_batch_size must be >= 1, got -1"],
    ),
    "zero-steps": (lambda w: train(w, "--train.max_steps", "0"), ["train.max_steps must be"]),
    "sequence-longer-than-context": (
        lambda w: train(w, "--train.seq_len", "512"),
        ["train.seq_len=512 exceeds model.context_length=128"],
    ),
    "vocab-too-small": (
        lambda w: train(w, "--model.vocab_size", "100"),
        ["model.vocab_size=100 is smaller than the tokenizer's 257 tokens"],
    ),
    "heads-not-dividing-width": (
        lambda w: train(w, "--model.dim", "66"),
        ["model.num_heads=4 does not divide model.dim=66"],
    ),
    "empty-data": (
        lambda w: ["prepare", "--data.source", str(w["tmp"] / "empty.txt")],
        ["contains no text"],
    ),
    "binary-data": (
        lambda w: ["prepare", "--data.source", str(w["tmp"] / "binary.txt")],
        ["looks binary"],
    ),
    "non-utf8-data": (
        lambda w: ["prepare", "--data.source", str(w["tmp"] / "latin1.txt"), "--data.strict_utf8"],
        ["is not valid UTF-8"],
    ),
    "missing-tokenizer-file": (
        lambda w: ["prepare", "--data.source", str(w["corpus"]), "--data.tokenizer", "nope.json"],
        ["nope.json"],
    ),
    "checkpoint-missing-tokenizer": (drop_tokenizer, ["missing lmforge_tokenizer.json"]),
    "truncated-safetensors": (truncate_weights, ["model.safetensors is", "manifest says"]),
    "truncated-safetensors-no-manifest": (
        truncate_weights_without_manifest,
        ["model.safetensors", "truncated"],
    ),
    "checkpoint-of-another-shape": (
        lambda w: train(w, "--model.dim", "32", "--init_from", str(w["run"])),
        ["does not fit this model"],
    ),
    "resume-with-another-shape": (
        lambda w: train(w, "--resume", "--model.num_heads", "2", out=str(w["run"])),
        ["model.num_heads: 4 -> 2"],
    ),
    "malicious-train-state": (malicious_train_state, ["weights_only=True", "not unpickled"]),
    "malicious-shard-index": (malicious_shard_index, ["posix.system", "refusing to load it"]),
}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input(case, world, capsys, monkeypatch):
    build, fragments = CATALOGUE[case]
    args = build(world)
    before = snapshot(world["tmp"])
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert_one_line_error(err, *fragments)
    assert snapshot(world["tmp"]) == before  # nothing that existed was touched or removed
    assert not (world["tmp"] / "pwned").exists()  # no payload ever ran


def test_full_disk_during_save(world, capsys, monkeypatch):
    args = full_disk(world, monkeypatch)
    checkpoints = world["run"] / "checkpoints"
    before = {name: snapshot(checkpoints / name) for name in os.listdir(checkpoints)}
    assert main(args) == 2
    assert_one_line_error(capsys.readouterr().err, "could not write checkpoint", "No space left")
    after = {name: snapshot(checkpoints / name) for name in os.listdir(checkpoints)}
    assert after == before  # the earlier checkpoints are intact and no staging is left behind


def test_catalogue_size():
    """Quoted in the README (Reliability): keep the two in step."""
    assert len(CATALOGUE) + 1 == 21
