"""Peak memory per rank on this CPU, measured, next to the planner's estimate (issue 22).

    .venv/bin/python benchmarks/memory_per_rank.py [--runs ddp:1,fsdp:1,fsdp:2,fsdp:4] [--json F]
    .venv/bin/python benchmarks/memory_per_rank.py --dry-run   # a tiny model, seconds (CI)

A Llama-shaped model of 265M parameters (1.06 GB of fp32 weights: dim 1024, 18 layers, 16
heads, 4 KV heads, SwiGLU 2,752, vocabulary 32,000, untied head) is written once as an lmforge
checkpoint. Each run is
real ranks under torchrun (gloo): `lmforge train --init_from` that checkpoint (build + load), 3
training steps of one 64-token sequence per rank, fp32, AdamW. Each rank runs this script in
--worker mode, which runs `lmforge train` unchanged but records its own peak RSS (ru_maxrss)
twice: once set-up is done (build, load, parallelize, optimizer) and after the last step, before
the final evaluation and checkpoint, which it skips. The table puts the largest rank's peaks
next to the planner's estimate for the same layout (parallel/planner.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = {"dim": 1024, "num_layers": 18, "num_heads": 16, "num_kv_heads": 4, "vocab_size": 32000}
TINY = {"dim": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "vocab_size": 320}
SEQ_LEN, STEPS = 64, 3


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(out: Path, argv: list[str]) -> int:
    """One rank: `lmforge train`, with its peak RSS written to out/rank<R>.json."""
    import lmforge.train.loop as loop
    from lmforge.cli import main

    record = {"rank": int(os.environ.get("RANK", "0"))}
    path = out / f"rank{record['rank']}.json"
    set_up = loop.set_up

    def measured_set_up(*args, **kwargs):
        result = set_up(*args, **kwargs)
        record["after_setup"] = peak_rss()
        return result

    def measured_steps(setup, counters, *args, **kwargs):
        record["after_steps"] = peak_rss()  # build + load + the steps so far
        path.write_text(json.dumps(record))
        return False, None  # no evaluation, no checkpoint: they are not what is measured

    loop.set_up, loop.evaluate_and_checkpoint = measured_set_up, measured_steps
    return main(argv)


def write_inputs(work: Path, model: dict) -> tuple[Path, Path]:
    """A byte-level text corpus and the starting checkpoint (in a child process, so that this
    one never holds the model)."""
    text = work / "corpus.txt"
    if not text.exists():
        text.write_text((Path(__file__).read_text() + "\n") * 200)
    checkpoint = work / "init"
    if not checkpoint.exists():
        code = (
            "import sys, json, torch\n"
            "from lmforge.checkpoint.directory import save_checkpoint\n"
            "from lmforge.models.config import ModelConfig\n"
            "from lmforge.models.transformer import Transformer\n"
            "from lmforge.tokenizer.simple import ByteTokenizer\n"
            "torch.manual_seed(0)\n"
            "config = ModelConfig(context_length=128, **json.loads(sys.argv[1]))\n"
            "save_checkpoint(sys.argv[2], Transformer(config), ByteTokenizer(), {})\n"
        )
        subprocess.run([sys.executable, "-c", code, json.dumps(model), str(checkpoint)], check=True)
    return text, checkpoint


def train_args(work: Path, text: Path, model: dict, strategy: str, ranks: int) -> list[str]:
    flags = {
        "--data.source": text, "--data.tokenizer": "byte", "--data.dir": work / "data",
        "--train.out_dir": work / f"run-{strategy}-{ranks}", "--train.max_steps": STEPS,
        "--train.seq_len": SEQ_LEN, "--train.micro_batch_size": 1,
        "--train.batch_tokens": SEQ_LEN * ranks, "--train.dtype": "fp32",
        "--train.device": "cpu", "--train.compile": False, "--train.peak_tflops": 1.0,
        "--train.log_interval": 1, "--parallel.strategy": strategy,
        "--model.context_length": 128,
    } | {f"--model.{key}": value for key, value in model.items()}  # fmt: skip
    return ["train", "--logging.no_progress_bar", *(str(x) for kv in flags.items() for x in kv)]


def measure(work: Path, text: Path, checkpoint: Path, model: dict, strategy: str, ranks: int):
    out = work / f"peaks-{strategy}-{ranks}"
    out.mkdir(exist_ok=True)
    args = [*train_args(work, text, model, strategy, ranks), "--init_from", str(checkpoint)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={ranks}", __file__, "--worker", str(out), "--", *args]  # fmt: skip
    # the threads `lmforge launch` would give each rank: the cores shared out
    env = os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode:
        raise SystemExit(f"{strategy} at {ranks} ranks failed:\n{done.stdout}\n{done.stderr}")
    peaks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]
    return peaks, args


def estimate(args: list[str], strategy: str, ranks: int) -> float:
    """The planner's total for the same run config as the ranks parsed it."""
    from lmforge.cli import parse
    from lmforge.parallel.planner import Layout, estimate_plan, plan_input
    from lmforge.train.commands import TrainCommand

    run = parse(TrainCommand, args[1:], "lmforge train").run
    return estimate_plan(plan_input(run, ranks, "cpu"), Layout(strategy)).total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="ddp:1,fsdp:1,fsdp:2,fsdp:4")
    parser.add_argument("--dry-run", action="store_true", help="a tiny model, fsdp at 2 ranks")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    args = parser.parse_args()
    model = TINY if args.dry_run else MODEL
    runs = ["fsdp:2"] if args.dry_run else args.runs.split(",")
    work = args.work or Path(tempfile.mkdtemp(prefix="memory-per-rank-"))
    work.mkdir(parents=True, exist_ok=True)
    text, checkpoint = write_inputs(work, model)
    from lmforge.runtime import machine_summary

    machine = machine_summary()
    print(f"machine: {machine}; model {model}, {SEQ_LEN} tokens per rank per step, fp32, AdamW")
    rows = []
    print(
        "| strategy | ranks | peak RSS after set-up (GiB) | after 3 steps | planner | measured / planner |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for run in runs:
        strategy, ranks = run.split(":")[0], int(run.split(":")[1])
        peaks, train = measure(work, text, checkpoint, model, strategy, ranks)
        setup = max(p["after_setup"] for p in peaks)
        steps = max(p["after_steps"] for p in peaks)
        planned = estimate(train, strategy, ranks)
        rows.append({"strategy": strategy, "ranks": ranks, "per_rank": peaks, "planner": planned})
        print(f"| {strategy} | {ranks} | {setup / 2**30:.2f} | {steps / 2**30:.2f} | "
              f"{planned / 2**30:.2f} | {steps / planned:.2f} |", flush=True)  # fmt: skip
    one = next((r for r in rows if r["ranks"] == 1 and r["strategy"] == "ddp"), None)
    four = next((r for r in rows if r["ranks"] == 4 and r["strategy"] == "fsdp"), None)
    if one and four:
        ratio = max(p["after_steps"] for p in four["per_rank"]) / one["per_rank"][0]["after_steps"]
        print(f"fsdp at 4 ranks, per-rank peak / one process (ddp): {ratio:.2f}x (target 0.35x)")
    if args.json:
        summary = {"machine": machine, "model": model, "rows": rows}
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        sys.exit(worker(Path(sys.argv[2]), sys.argv[4:]))
    sys.exit(main())
