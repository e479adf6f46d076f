"""Where training metrics go: metrics.jsonl always, W&B and TensorBoard when enabled."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.config import LoggingConfig, RunConfig, to_dict
from lmforge.errors import ConfigError

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    def __init__(self, out_dir: Path, logging: LoggingConfig, run: RunConfig):
        self.file = open(out_dir / METRICS_FILE, "a", buffering=1)  # noqa: SIM115 (closed in close())
        self.wandb = self.tensorboard = None
        if logging.wandb:
            wandb = _optional_import("wandb", "wandb")
            self.wandb = wandb.init(
                project=logging.wandb_project,
                name=out_dir.name,
                dir=str(out_dir),
                config=to_dict(run),
            )
        if logging.tensorboard:
            _optional_import("tensorboard", "tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, metrics: dict) -> None:
        record = {"step": step, **metrics}
        self.file.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.wandb is not None:
            self.wandb.log(numeric, step=step)
        if self.tensorboard is not None:
            for key, value in numeric.items():
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _optional_import(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(
            f"logging.{extra} is on but {module} is not installed; pip install 'lmforge[{extra}]'"
        ) from None


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} has no {METRICS_FILE}; point at a run directory made by `lmforge train`"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in step order, one per step. A step logged twice (replayed after a
    resume from an earlier checkpoint, or a loss-health rollback) keeps its latest value: the
    timeline the run actually continued from."""
    latest = {r["step"]: r[key] for r in records if key in r}
    return sorted(latest.items())
