"""Time to loss: `lmforge train --config shakespeare-speedrun` from process start to exit.

    .venv/bin/python benchmarks/time_to_loss.py [--append] [extra `lmforge train` flags]

Runs training as a fresh process in a temporary directory with no prepared data, so the wall time
includes interpreter start, char tokenization and the 90/10 split, training, the final evaluation,
the checkpoint and the loss plot. The data source is the local Tiny Shakespeare copy (the named
`shakespeare` dataset would download the same file). The val loss is the run's final evaluation
(config: eval_batches x micro_batch_size random windows of the val split, ~1.5x its size). Target
from the issue: val loss <= 1.88 within 35 s. Prints a table; --append adds it to BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import append_to_benchmarks, key_value_table, machine  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
TARGET_LOSS, TARGET_S = 1.88, 35.0


def recipe(run: dict) -> str:
    """The resolved config's shape and schedule, so an appended table names what it measured."""
    m, o, t = run["model"], run["optim"], run["train"]
    name = o.get("name", "adamw")
    peaks = (
        f"muon lr {o['muon_lr']:g}, adamw lr {o['lr']:g}" if name == "muon" else f"lr {o['lr']:g}"
    )
    if o.get("embedding_lr") is not None:
        peaks += f", embedding lr {o['embedding_lr']:g}"
    return (
        f"{m['num_layers']} x {m['dim']}, {m['num_heads']} heads, batch {t['micro_batch_size']} x "
        f"{t['seq_len']}, {name}: {peaks}, {o['schedule']} (warmup {o['warmup_steps']}), "
        f"{t['max_steps']} steps, {t['dtype']}"
    )


def main() -> None:
    append = "--append" in sys.argv
    extra = [a for a in sys.argv[1:] if a != "--append"]
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            sys.executable, "-m", "lmforge", "train", "--config", "shakespeare-speedrun",
            "--data.source", str(DATA), "--data.dir", f"{tmp}/data",
            "--train.out_dir", f"{tmp}/run", "--logging.no_progress_bar", *extra,
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"{' '.join(args)} failed:\n{done.stderr}")
        run = tomllib.loads(Path(f"{tmp}/run/config.toml").read_text())
        records = [json.loads(x) for x in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_loss" in r][-1]
    speeds = sorted(r["tokens_per_s"] for r in records if "tokens_per_s" in r)
    met = val["val_loss"] <= TARGET_LOSS and wall <= TARGET_S
    rows = [
        ("date", datetime.date.today().isoformat()),
        ("machine", machine()),
        ("command", "lmforge train --config shakespeare-speedrun " + " ".join(extra)),
        ("recipe", recipe(run)),
        ("data preparation", "counted (fresh data dir, char tokenizer, 90/10 split)"),
        ("wall s (process start to exit)", f"{wall:.1f}"),
        ("final val loss (nats/char)", f"{val['val_loss']:.4f} at step {val['step']}"),
        ("train tokens/s (median of log intervals)", f"{speeds[len(speeds) // 2]:,.0f}"),
        (
            "peak RSS GiB",
            f"{max(r['peak_memory_gib'] for r in records if 'peak_memory_gib' in r):.2f}",
        ),
        (f"target val <= {TARGET_LOSS} in <= {TARGET_S:.0f} s", "met" if met else "NOT met"),
    ]
    table = key_value_table("time to loss", rows)
    print(table)
    if append:
        append_to_benchmarks(table)


if __name__ == "__main__":
    main()
