"""Time the quickstart from nothing (no prepared data, no run) to printed samples.

    .venv/bin/python benchmarks/quickstart.py [--append] [extra `lmforge train` flags]

Runs `lmforge prepare`, `lmforge train --config quickstart` and `lmforge sample` as separate
processes in a temporary directory, so the wall time includes interpreter start, BPE training
and tokenization. Prints a table; --append adds it to BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

from lmforge.runtime import machine_summary

REPO = Path(__file__).resolve().parents[1]
LMFORGE = [sys.executable, "-m", "lmforge"]


def timed(args: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr}")
    return time.perf_counter() - start, done.stdout


def machine() -> str:
    """CPU model, its bf16 units, cores, torch version (and any ISA emulation), for every table."""
    return machine_summary()


def key_value_table(title: str, rows: list[tuple[str, str]]) -> str:
    """A two-column Markdown table, the format every benchmark's results use."""
    return f"| {title} | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def append_to_benchmarks(text: str) -> None:
    with open(REPO / "BENCHMARKS.md", "a") as out:
        out.write(f"\n{text}\n")


def main() -> None:
    append = "--append" in sys.argv
    extra = [a for a in sys.argv[1:] if a != "--append"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare_s, _ = timed([*LMFORGE, "prepare", "--config", "quickstart", *extra], work)
        train_s, _ = timed(
            [*LMFORGE, "train", "--config", "quickstart", "--logging.no_progress_bar", *extra], work
        )
        sample_s, text = timed(
            [*LMFORGE, "sample", "--checkpoint", "runs/quickstart", "--prompt", "def ",
             "--max_new_tokens", "120", "--temperature", "0.7", "--top_k", "50"],
            work,
        )  # fmt: skip
        records = [json.loads(x) for x in (work / "runs/quickstart/metrics.jsonl").open()]
        resolved = tomllib.loads((work / "runs/quickstart/config.toml").read_text())["train"]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][
        1:
    ]  # first includes warmup
    mfu = [r["mfu"] for r in records if "mfu" in r][1:]
    total = prepare_s + train_s + sample_s
    rows = [
        ("date", datetime.date.today().isoformat()),
        ("machine", machine()),
        ("extra flags", " ".join(extra) or "none"),
        ("prepare (BPE + tokenize) s", f"{prepare_s:.1f}"),
        ("train s (process start to exit)", f"{train_s:.1f}"),
        ("sample s (120 tokens)", f"{sample_s:.1f}"),
        ("total wall s", f"{total:.1f}"),
        (
            "dtype (auto) / steps trained (time_budget)",
            f"{resolved['dtype']} / {resolved['max_steps']}",
        ),
        ("final val loss (nats/token)", f"{val[-1]:.3f}"),
        ("train tokens/s (median of log intervals)", f"{statistics.median(speeds):,.0f}"),
        (
            "MFU (median, vs the measured peak of that dtype)",
            f"{100 * statistics.median(mfu):.1f}%",
        ),
    ]
    table = "| quickstart | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    print("\nsample:\n" + text)
    if append:
        with open(REPO / "BENCHMARKS.md", "a") as out:
            out.write(
                f"\n{table}\n\nSample after training (`def ` prompt):\n\n```python\n{text.strip()}\n```\n"
            )


if __name__ == "__main__":
    main()
