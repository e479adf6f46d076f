"""The metrics log and the loss plot."""

from __future__ import annotations

import json

import pytest

from lmforge.config import LoggingConfig, RunConfig
from lmforge.errors import ConfigError
from lmforge.train.metrics import METRICS_FILE, MetricsLogger, read_metrics, series
from lmforge.train.plot import plot_run


def test_metrics_log_appends_jsonl_and_reads_back(tmp_path):
    logger = MetricsLogger(tmp_path, LoggingConfig(progress_bar=False), RunConfig())
    logger.log(1, {"loss": 2.5, "lr": 1e-3})
    logger.log(2, {"val_loss": 2.0})
    logger.close()
    again = MetricsLogger(tmp_path, LoggingConfig(), RunConfig())  # a resumed run appends
    again.log(3, {"loss": 1.5})
    again.close()
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == read_metrics(tmp_path)
    assert read_metrics(tmp_path) == [
        {"step": 1, "loss": 2.5, "lr": 1e-3},
        {"step": 2, "val_loss": 2.0},
        {"step": 3, "loss": 1.5},
    ]


def test_missing_optional_logger_is_a_config_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ConfigError, match=r"pip install 'lmforge\[wandb\]'"):
        MetricsLogger(tmp_path, LoggingConfig(wandb=True), RunConfig())


def test_read_metrics_of_a_non_run(tmp_path):
    with pytest.raises(ConfigError, match="has no metrics.jsonl"):
        read_metrics(tmp_path)


def test_plot_run_writes_png(tmp_path):
    logger = MetricsLogger(tmp_path, LoggingConfig(), RunConfig())
    for step in range(1, 11):
        logger.log(step, {"loss": 5.0 / step})
    logger.log(10, {"val_loss": 0.7})
    logger.close()
    default = plot_run(tmp_path)
    assert default == tmp_path / "loss.png"
    data = default.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    custom = plot_run(tmp_path, tmp_path / "sub.png")
    assert custom.read_bytes()[:4] == b"\x89PNG"


def test_series_keeps_the_latest_value_of_a_replayed_step():
    records = [
        {"step": 1, "loss": 5.0},
        {"step": 2, "loss": 4.0, "val_loss": 4.5},
        {"step": 3, "loss": float("nan")},  # abandoned by a rollback to step 2...
        {"step": 3, "loss": 3.5},  # ...and replayed
        {"step": 4, "loss": 3.0},
    ]
    assert series(records, "loss") == [(1, 5.0), (2, 4.0), (3, 3.5), (4, 3.0)]
    assert series(records, "val_loss") == [(2, 4.5)]
    assert series(records, "grad_norm") == []


def test_plot_of_a_run_with_no_losses_warns_nothing(tmp_path):
    import warnings

    logger = MetricsLogger(tmp_path, LoggingConfig(), RunConfig())
    logger.log(0, {"tokens": 0})  # stopped before its first log line
    logger.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plot_run(tmp_path).read_bytes()[:4] == b"\x89PNG"
