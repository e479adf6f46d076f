"""`evaluate_checkpoint_loss`: equals the run's logged val loss; refuses a foreign tokenizer."""

from __future__ import annotations

import json
import math

import pytest
from conftest import tiny_run

from lmforge.config import DataConfig
from lmforge.data.loader import TokenShards
from lmforge.data.prepare import prepare
from lmforge.errors import DataError
from lmforge.evals.loss import evaluate_checkpoint_loss
from lmforge.train.loop import train


@pytest.mark.parametrize("masking", [False, True])
def test_equals_the_val_loss_the_training_loop_logged(tmp_path, corpus_dir, masking):
    data_dir = tmp_path / "data"
    run = tiny_run(
        tmp_path / "run",
        corpus_dir,
        data_dir,
        data={"sampling": "sequential", "document_masking": masking},
        train={"max_steps": 2, "eval_batches": 3},
    )
    train(run)
    logged = json.loads((tmp_path / "run/checkpoints/last/checkpoint.json").read_text())
    result = evaluate_checkpoint_loss(
        str(tmp_path / "run"),
        str(data_dir),
        batches=3,
        batch_size=4,
        seq_len=32,
        device="cpu",
        dtype="fp32",
        document_masking=masking,
    )
    assert result["loss"] == pytest.approx(logged["val_loss"], rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["tokens"] == 3 * 4 * 32 and result["split"] == "val"


def test_small_split_is_not_counted_twice(tmp_path, trained_run, byte_data_dir):
    result = evaluate_checkpoint_loss(
        str(trained_run), str(byte_data_dir), batches=10_000, device="cpu", dtype="fp32"
    )
    val_tokens = TokenShards(byte_data_dir, "val").num_tokens
    assert result["seq_len"] == 128 and result["tokens"] < val_tokens  # ~900 val bytes
    assert result["tokens"] == result["batches"] * result["batch_size"] * 128
    assert math.isfinite(result["loss"])


def test_tokenizer_mismatch_is_a_data_error(tmp_path, corpus_file, trained_run):
    config = DataConfig(source=str(corpus_file), tokenizer="char", dir=str(tmp_path / "chars"))
    char_dir = prepare(config, progress=False)
    with pytest.raises(DataError, match=r"tokenized with char .* uses byte"):
        evaluate_checkpoint_loss(str(trained_run), str(char_dir), device="cpu")
