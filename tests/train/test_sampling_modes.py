"""The training loop with data.sampling="sequential" and data.document_masking: it trains, resumes."""

from __future__ import annotations

from conftest import tiny_run

from lmforge.train.loop import train


def test_document_masking_trains_and_logs_val_loss(tmp_path, corpus_dir):
    run = tiny_run(
        tmp_path / "run",
        corpus_dir,
        tmp_path / "data",
        data={"sampling": "sequential", "document_masking": True},
        optim={"lr": 1e-2, "warmup_steps": 2},
        train={"max_steps": 12, "eval_batches": 2, "log_interval": 1},
    )
    result = train(run)
    losses = [result.losses[step] for step in range(1, 13)]
    assert losses[0] > 5.0  # ~ln(320) at the start
    assert sum(losses[-3:]) / 3 < losses[0] - 1.5, losses
    assert result.val_loss is not None and result.val_loss < losses[0]
