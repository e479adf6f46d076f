"""The bad-input catalogue: every entry is a mistake a user makes, fed to the real CLI entry
point. Each must end in one line naming the problem and the fix, a non-zero exit, no traceback,
and every file that existed before left byte-for-byte intact. The number of entries is quoted in
docs/reliability.md."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from bad_input_builders import (
    chat,
    corrupt,
    data_dir_is_file,
    drop_tokenizer,
    edit_config,
    export_to,
    finetune,
    finetune_from_truncated,
    full_disk,
    malicious_shard_index,
    malicious_train_state,
    out_dir_is_file,
    out_dir_under_file,
    sample,
    snapshot,
    toml,
    train,
    truncate_weights,
    truncate_weights_without_manifest,
)
from conftest import assert_one_line_error

from lmforge.cli import main


@pytest.fixture
def world(tmp_path, corpus_file, byte_data_dir, trained_run):
    """A workspace holding data files and a copy of a finished run (everything snapshotted)."""
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    (tmp_path / "latin1.txt").write_bytes("naïve café".encode("latin-1"))
    (tmp_path / "run.toml").write_text("[model]\nnum_layer = 3\n")
    turn = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "a b a"}]
    (tmp_path / "chat.json").write_text(json.dumps([{"messages": turn}] * 8))
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    return {"tmp": tmp_path, "corpus": corpus_file, "data": byte_data_dir, "run": run}


# id -> (arguments, or a function building them from the workspace; fragments of the message)
CATALOGUE = {
    "unknown-flag": (lambda w: train(w, "--model.num_layer", "3"), ["--model.num_layers"]),
    "unknown-toml-key": (
        lambda w: ["train", "--config", str(w["tmp"] / "run.toml")],
        ["unknown config key 'model.num_layer'; did you mean 'model.num_layers'?"],
    ),
    "wrong-type": (lambda w: train(w, "--train.max_steps", "ten"), ["--train.max_steps", "'ten'"]),
    "zero-width": (
        lambda w: train(w, "--model.dim", "0"),
        ["model.dim must be in [1, 16,777,216], got 0"],
    ),
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

# Numbers: finiteness and ranges (config_checks.RANGES), on the command line.
NUMBERS = {
    "optim.lr": ["nan", "inf", "-1", "-inf"],
    "optim.min_lr": ["-1e-4", "nan"],
    "optim.beta1": ["1.5", "1", "-0.1"],
    "optim.beta2": ["nan", "2"],
    "optim.eps": ["0", "-1e-8"],
    "optim.weight_decay": ["-0.1", "inf"],
    "optim.grad_clip": ["-1", "nan"],
    "optim.warmup_steps": ["-5"],
    "optim.decay_fraction": ["1.5", "-0.5"],
    "optim.muon_lr": ["0", "nan"],
    "optim.muon_momentum": ["1", "-1"],
    "optim.embedding_lr": ["0", "-inf"],
    "train.seq_len": ["-1", "0"],
    "train.checkpoint_interval": ["0", "-10"],
    "train.eval_interval": ["0", "-1"],
    "train.eval_batches": ["0", "-1"],
    "train.log_interval": ["0"],
    "train.keep_checkpoints": ["-1", "0"],
    "train.peak_tflops": ["0", "nan"],
    "train.hellaswag_interval": ["-1"],
    "train.hellaswag_limit": ["0"],
    "train.early_stopping_patience": ["-2"],
    "train.seed": ["-1"],
    "health.max_bad_steps": ["0", "-3"],
    "health.rollback_lr_factor": ["0", "1.5", "nan"],
    "health.max_rollbacks": ["-1"],
    "health.spike_window": ["-100"],
    "health.spike_zscore": ["0", "inf"],
    "data.val_fraction": ["0", "1.5"],
    "data.shard_tokens": ["0"],
    "data.workers": ["-1"],
}
for key, values in NUMBERS.items():
    for value in values:
        CATALOGUE[f"{key}={value}"] = (
            lambda w, key=key, value=value: train(w, f"--{key}", value),
            [f"{key} must be"],
        )

CATALOGUE |= {
    "toml-nan-lr": (lambda w: toml(w, "[optim]\nlr = nan\n"), ["optim.lr must be >= 0, got nan"]),
    "toml-inf-lr": (lambda w: toml(w, "[optim]\nlr = inf\n"), ["optim.lr must be >= 0, got inf"]),
    "toml-negative-lr": (lambda w: toml(w, "[optim]\nlr = -0.1\n"), ["optim.lr must be >= 0"]),
    "toml-beta1-above-1": (lambda w: toml(w, "[optim]\nbeta1 = 1.2\n"), ["optim.beta1"]),
    "toml-zero-interval": (
        lambda w: toml(w, "[train]\ncheckpoint_interval = 0\n"),
        ["train.checkpoint_interval must be >= 1"],
    ),
    "toml-non-utf8": (
        lambda w: toml(w, b"[optim]\nlr = 0.1 # caf\xe9\n"),
        ["is not UTF-8", "re-save it as UTF-8"],
    ),
    "toml-binary": (lambda w: toml(w, b"\xff\xfe\x00\x01"), ["is not UTF-8"]),
    "toml-syntax": (lambda w: toml(w, "[optim\nlr = 1\n"), ["is not valid TOML"]),
    "toml-lr-string": (lambda w: toml(w, '[optim]\nlr = "fast"\n'), ["optim.lr must be float"]),
    "device-tpu": (lambda w: train(w, "--train.device", "tpu"), ["train.device='tpu'"]),
    "device-banana": (lambda w: train(w, "--train.device", "banana"), ["train.device='banana'"]),
    "device-missing-gpu": (
        lambda w: train(w, "--train.device", "cuda:99"),
        ["train.device='cuda:99'"],
    ),
    "device-meta": (lambda w: train(w, "--train.device", "meta"), ["train.device='meta'"]),
    "sample-device-tpu": (lambda w: sample(w, "--device", "tpu"), ["--device='tpu'"]),
    "eval-device-tpu": (
        lambda w: [
            "eval",
            "loss",
            "--checkpoint",
            str(w["run"]),
            "--data",
            str(w["data"]),
            "--device",
            "tpu",
        ],  # fmt: skip
        ["--device='tpu'"],
    ),
    "out-dir-is-a-file": (out_dir_is_file, ["is a file, not a directory"]),
    "out-dir-under-a-file": (out_dir_under_file, ["which is a file"]),
    "data-dir-is-a-file": (data_dir_is_file, ["data.dir", "is a file"]),
    "sample-prompt-without-value": (
        lambda w: ["sample", "--checkpoint", str(w["run"]), "--prompt"],
        ["--prompt needs a value"],
    ),
    "sample-top-p-zero": (lambda w: sample(w, "--top_p", "0"), ["--top_p must be in (0, 1]"]),
    "sample-top-p-above-one": (lambda w: sample(w, "--top_p", "1.5"), ["--top_p", "1.5"]),
    "sample-top-p-nan": (lambda w: sample(w, "--top_p", "nan"), ["--top_p", "nan"]),
    "sample-negative-temperature": (
        lambda w: sample(w, "--temperature", "-0.5"),
        ["--temperature must be", "-0.5"],
    ),
    "sample-inf-temperature": (lambda w: sample(w, "--temperature", "inf"), ["--temperature"]),
    "sample-negative-max-new-tokens": (
        lambda w: sample(w, "--max_new_tokens", "-5"),
        ["--max_new_tokens must be >= 1"],
    ),
    "sample-zero-max-new-tokens": (lambda w: sample(w, "--max_new_tokens", "0"), ["--max_new"]),
    "sample-negative-top-k": (lambda w: sample(w, "--top_k", "-1"), ["--top_k must be >= 0"]),
    "chat-top-p-zero": (lambda w: chat(w, "--top_p", "0"), ["--top_p must be in (0, 1]"]),
    "chat-negative-temperature": (lambda w: chat(w, "--temperature", "-1"), ["--temperature"]),
    "chat-negative-top-k": (lambda w: chat(w, "--top_k", "-3"), ["--top_k"]),
    "chat-device-tpu": (lambda w: chat(w, "--device", "tpu"), ["--device='tpu'"]),
    "config-json-invalid": (
        corrupt("config.json", b"{not json"),
        ["config.json", "not valid JSON"],
    ),
    "config-json-invalid-no-manifest": (
        corrupt("config.json", b"{not json", manifest="removed"),
        ["config.json", "not valid JSON"],
    ),
    "config-json-invalid-init-from": (
        corrupt("config.json", b"\x00\x01", command="init_from"),
        ["config.json"],
    ),
    "config-json-a-list": (corrupt("config.json", b"[1, 2]"), ["config.json", "not an object"]),
    "config-json-wrong-type": (
        corrupt("config.json", b'{"dim": "wide"}'),
        ["config.json", "model.dim must be int"],
    ),
    "tokenizer-garbage": (
        corrupt("lmforge_tokenizer.json", b"\x89PNG\r\n\x1a\n"),
        ["lmforge_tokenizer.json"],
    ),
    "tokenizer-garbage-no-manifest": (
        corrupt("lmforge_tokenizer.json", b"\xff" * 64, manifest="removed"),
        ["lmforge_tokenizer.json"],
    ),
    "tokenizer-type-wrong-type": (
        corrupt("lmforge_tokenizer.json", b'{"type": ["byte"]}'),
        ["tokenizer type", "lmforge_tokenizer.json"],
    ),
    "tokenizer-type-number": (
        corrupt("lmforge_tokenizer.json", b'{"type": 5}'),
        ["tokenizer type", "lmforge_tokenizer.json"],
    ),
    "char-tokenizer-chars-wrong-type": (
        corrupt("lmforge_tokenizer.json", b'{"type": "char", "chars": 5}'),
        ["tokenizer", "cannot be loaded"],
    ),
    "checkpoint-json-invalid": (
        corrupt("checkpoint.json", b"{{{"),
        ["checkpoint.json", "not valid JSON"],
    ),
    "checkpoint-json-a-string": (
        corrupt("checkpoint.json", b'"hello"', manifest="removed"),
        ["checkpoint.json", "not an object"],
    ),
    "manifest-garbage": (
        corrupt("manifest.json", b"\x00garbage", manifest="kept"),
        ["manifest.json is not a valid manifest"],
    ),
    "manifest-entries-wrong-type": (
        corrupt("manifest.json", b'{"files": {"config.json": 5}}', manifest="kept"),
        ["manifest.json is not a valid manifest"],
    ),
    "manifest-files-a-list": (
        corrupt("manifest.json", b'{"files": [1]}', manifest="kept"),
        ["manifest.json is not a valid manifest"],
    ),
    "finetune-nan-lr": (lambda w: finetune(w, "--optim.lr", "nan"), ["optim.lr must be >= 0"]),
    "finetune-zero-dpo-beta": (
        lambda w: finetune(w, "--finetune.dpo_beta", "0", method="dpo"),
        ["finetune.dpo_beta must be > 0"],
    ),
    "finetune-zero-lora-rank": (
        lambda w: finetune(w, "--finetune.lora.enabled", "--finetune.lora.rank", "0"),
        ["finetune.lora.rank must be >= 1"],
    ),
    "finetune-lora-dropout-one": (
        lambda w: finetune(w, "--finetune.lora.dropout", "1.0"),
        ["finetune.lora.dropout must be in [0, 1)"],
    ),
    "finetune-distill-nan-temperature": (
        lambda w: finetune(w, "--finetune.temperature", "nan", method="distill"),
        ["finetune.temperature must be > 0"],
    ),
    "finetune-device-tpu": (lambda w: finetune(w, "--train.device", "tpu"), ["train.device"]),
    "finetune-from-truncated-weights": (finetune_from_truncated, ["model.safetensors"]),
    # a model read from a file: the range table, then memory (tests/test_model_file_checks.py
    # tries every field in every format)
    "config-json-negative-ffn-dim": (
        edit_config(ffn_dim=-384),
        ["config.json: model.ffn_dim must be in [1, 16,777,216], got -384"],
    ),
    "config-json-nan-rope-theta": (edit_config(rope_theta=float("nan")), ["model.rope_theta"]),
    "config-json-zero-ffn-multiple": (edit_config(ffn_multiple_of=0), ["model.ffn_multiple_of"]),
    "config-json-billion-layers": (edit_config(num_layers=10**9), ["model.num_layers"]),
    "config-json-negative-ffn-dim-init-from": (
        edit_config("init_from", ffn_dim=-384),
        ["config.json", "model.ffn_dim"],
    ),
    "config-json-negative-ffn-dim-export": (
        edit_config("export", ffn_dim=-384),
        ["config.json", "model.ffn_dim"],
    ),
    "config-json-70-terabytes": (
        edit_config(dim=2**20, vocab_size=2**24, num_heads=16),
        ["model needs", "TB of fp32 weights", "free"],
    ),
    "export-onto-a-file": (export_to("file"), ["--out", "already exists"]),
    "export-under-a-file": (export_to("under-file"), ["--out", "which is a file"]),
    "export-into-a-full-directory": (export_to("non-empty"), ["--out", "not empty"]),
    "launch-zero-processes": (
        lambda w: ["launch", "--nproc-per-node", "0", *train(w)],
        ["--nproc-per-node must be"],
    ),
    "launch-zero-nodes": (
        lambda w: ["launch", "--nnodes", "0", *train(w)],
        ["--nnodes must be"],
    ),
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
    """Quoted in docs/reliability.md: keep the two in step (+2: the two disk tests)."""
    assert len(CATALOGUE) + 2 == 143


def test_file_size_limit_during_the_dcp_save(world):
    """A real write failure, not a faked one: `ulimit -f` stops the optimizer state's .distcp
    file (about 1.2 MB here) part way, inside torch.distributed.checkpoint's own writer."""
    import subprocess
    import sys

    checkpoints = world["run"] / "checkpoints"
    before = {name: snapshot(checkpoints / name) for name in os.listdir(checkpoints)}
    config = world["run"] / "config.toml"
    command = [sys.executable, "-m", "lmforge", "train", "--config", str(config), "--resume"]
    command += ["--train.max_steps", "6", "--train.out_dir", str(world["run"])]
    script = "ulimit -f 800 && exec " + " ".join(f"'{part}'" for part in command)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, "could not write checkpoint", "File too large")
    after = {name: snapshot(checkpoints / name) for name in os.listdir(checkpoints)}
    assert after == before  # no step-0000006.tmp left, the earlier checkpoint intact
