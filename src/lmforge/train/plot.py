"""Loss curves as a PNG: `lmforge plot RUN_DIR` (also drawn at the end of every run), and for a
GRPO run its reward curve beside them (reward.png)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402

from lmforge.train.metrics import read_metrics, series  # noqa: E402


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw train and val loss against step; returns the PNG path (default RUN_DIR/loss.png)."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    train, val = series(records, "loss"), series(records, "val_loss")
    figure, axis = plt.subplots(figsize=(8, 5))
    if train:
        axis.plot(*zip(*train, strict=True), label="train", linewidth=1)
    if val:
        axis.plot(*zip(*val, strict=True), label="val", marker="o", linewidth=2)
    axis.set_xlabel("step")
    axis.set_ylabel("loss (nats/token)")
    axis.set_title(run_dir.name)
    axis.grid(alpha=0.3)
    if train or val:  # a run stopped before its first log line has nothing to label
        axis.legend()
    else:
        axis.text(0.5, 0.5, "no losses logged yet", ha="center", transform=axis.transAxes)
    out = Path(out) if out else run_dir / "loss.png"
    figure.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(figure)
    if series(records, "reward/total/mean"):
        plot_rewards(records, run_dir / "reward.png", run_dir.name)
    return out


def plot_rewards(records: list[dict], out: Path, title: str, window: int = 8) -> Path:
    """GRPO: the mean reward of each step's samples (and its running mean over `window` steps)
    and the greedy held-out accuracy at each evaluation."""
    rewards, accuracy = series(records, "reward/total/mean"), series(records, "val_accuracy")
    figure, axis = plt.subplots(figsize=(8, 5))
    steps, values = zip(*rewards, strict=True)
    axis.plot(steps, values, label="train reward (samples)", linewidth=1, alpha=0.4)
    running = [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]
    axis.plot(steps, running, label=f"train reward, mean of {window} steps", linewidth=2)
    if accuracy:
        axis.plot(*zip(*accuracy, strict=True), label="held-out accuracy (greedy)", marker="o")
    axis.set_xlabel("step")
    axis.set_ylabel("reward / accuracy")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return out
