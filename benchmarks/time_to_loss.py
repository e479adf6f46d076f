"""Time to loss: `lmforge train --config shakespeare-speedrun` against nanoGPT's CPU recipe.

    .venv/bin/python benchmarks/time_to_loss.py [--append] [--skip-baseline | --baseline-only]
        [--max-iters N] [--eval-batches N] [extra `lmforge train` flags]

lmforge runs as a fresh process in a temporary directory with no prepared data, so its wall time
includes interpreter start, char tokenization and the 90/10 split, training, the final
evaluation, the checkpoint and the loss plot. The data source is the local Tiny Shakespeare copy
(the named `shakespeare` dataset would download the same file) under $LMFORGE_SHARED_DATA, else
../shared/data. Its val loss is the run's final evaluation (config: eval_batches x
micro_batch_size random windows of the val split).

The baseline, nanogpt_baseline.py, runs in its own process timed from its launch: a plain fp32
PyTorch GPT trained with the recipe nanoGPT's README gives for shakespeare_char on a CPU (4 x 128,
context 64, batch 12, AdamW lr 1e-3, cosine to 1e-4 at 2,000 iters, eval every 250), on the
same characters and 90/10 split. Its time is the wall time at its first evaluation with val loss
<= 1.88, where it stops; if it never gets there, its last evaluation's val loss and time.
--max-iters and --eval-batches shorten it (tests). Issue 14's target: lmforge wall / baseline wall <= 0.5.
Prints one table; --append adds it to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nanogpt_baseline  # noqa: E402
from nanogpt_baseline import EVAL_BATCHES, MAX_ITERS, TARGET_LOSS  # noqa: E402
from quickstart import append_to_benchmarks, key_value_table, machine  # noqa: E402

SHARED = (
    os.environ.get("LMFORGE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared/data"
)
DATA = Path(SHARED) / "tinyshakespeare" / "input.txt"
TARGET_S, TARGET_RATIO = 35.0, 0.5


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


def lmforge(extra: list[str]) -> dict:
    """`lmforge train --config shakespeare-speedrun` as a fresh process, timed start to exit."""
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
    return {
        "wall_s": wall,
        "val_loss": val["val_loss"],
        "step": val["step"],
        "recipe": recipe(run),
        "tokens_per_s": speeds[len(speeds) // 2],
        "peak_rss_gib": max(r["peak_memory_gib"] for r in records if "peak_memory_gib" in r),
    }


def baseline(max_iters: int, eval_batches: int) -> dict:
    """nanogpt_baseline.py in a fresh process, timed from its launch; its JSON result."""
    launched = time.time()
    args = [
        sys.executable, nanogpt_baseline.__file__, str(DATA),
        "--max-iters", str(max_iters), "--eval-batches", str(eval_batches),
        "--launched-at", repr(launched),
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def lmforge_rows(ours: dict, extra: list[str]) -> list[tuple[str, str]]:
    met = ours["val_loss"] <= TARGET_LOSS and ours["wall_s"] <= TARGET_S
    return [
        ("lmforge command", " ".join(["lmforge train --config shakespeare-speedrun", *extra])),
        ("lmforge recipe", ours["recipe"]),
        ("lmforge data preparation", "counted (fresh data dir, char tokenizer, 90/10 split)"),
        ("lmforge wall s (process start to exit)", f"{ours['wall_s']:.1f}"),
        ("lmforge final val loss (nats/char)", f"{ours['val_loss']:.4f} at step {ours['step']}"),
        ("lmforge train tokens/s (median of log intervals)", f"{ours['tokens_per_s']:,.0f}"),
        ("lmforge peak RSS GiB", f"{ours['peak_rss_gib']:.2f}"),
        (f"lmforge val <= {TARGET_LOSS} in <= {TARGET_S:.0f} s", "met" if met else "NOT met"),
    ]


def baseline_rows(base: dict) -> list[tuple[str, str]]:
    last = base["evals"][-1]
    reached = last["val"] <= TARGET_LOSS
    trail = ", ".join(f"{e['iter']}: {e['val']:.3f}" for e in base["evals"])
    return [
        ("baseline recipe", nanogpt_baseline.recipe(base["max_iters"])),
        (
            f"baseline wall s to val <= {TARGET_LOSS} (process start; stops there)"
            if reached
            else f"baseline wall s, never reached {TARGET_LOSS} (process start to last eval)",
            f"{last['wall_s']:.1f} (iter {last['iter']}, val {last['val']:.4f})",
        ),
        ("baseline val loss by iter", trail),
        ("baseline train tokens/s (median step)", f"{base['tokens_per_s']:,.0f}"),
    ]


def ratio_row(ours: dict, base: dict) -> tuple[str, str]:
    last = base["evals"][-1]
    ratio = ours["wall_s"] / last["wall_s"]
    if ours["val_loss"] > TARGET_LOSS:
        verdict = f"NOT met (lmforge ended above {TARGET_LOSS})"
    else:
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    if last["val"] > TARGET_LOSS:  # its time to the target is longer still: ratio is an upper bound
        verdict += f" (an upper bound: the baseline never reached {TARGET_LOSS})"
    return (
        f"ratio lmforge wall / baseline wall (target <= {TARGET_RATIO})",
        f"{ratio:.2f}: {verdict}",
    )


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--skip-baseline", action="store_true", help="time lmforge only")
    side.add_argument("--baseline-only", action="store_true", help="time the baseline only")
    parser.add_argument("--max-iters", type=int, default=MAX_ITERS, help="baseline schedule length")
    parser.add_argument(
        "--eval-batches", type=int, default=EVAL_BATCHES, help="baseline batches per evaluation"
    )
    return parser.parse_known_args()


def main() -> None:
    args, extra = parse_args()
    rows = [
        ("date", datetime.date.today().isoformat()),
        ("machine", machine()),
        ("OMP_NUM_THREADS (both sides)", os.environ.get("OMP_NUM_THREADS", "unset")),
    ]
    base = None if args.skip_baseline else baseline(args.max_iters, args.eval_batches)
    if not args.baseline_only:
        ours = lmforge(extra)
        rows += lmforge_rows(ours, extra)
    if base is not None:
        rows += baseline_rows(base)
    if base is not None and not args.baseline_only:
        rows.append(ratio_row(ours, base))
    table = key_value_table("time to loss", rows)
    print(table)
    if args.append:
        append_to_benchmarks(table)


if __name__ == "__main__":
    main()
