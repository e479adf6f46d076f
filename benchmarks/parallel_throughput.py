"""Training throughput, MFU and peak memory per parallel strategy, side by side in one run.

    .venv/bin/python benchmarks/parallel_throughput.py [--append] [--preset small-llama]
        [--nproc 1,2] [--steps 30] [--dtype bf16] [--compile] [extra `lmforge train` flags]

Each row is a fresh `lmforge launch --standalone --nproc-per-node N train` of the same config
(strategy x activation checkpointing x ranks) on the byte-tokenized Tiny Shakespeare excerpt
shipped in ../shared/data (or any --data.source). Tokens/s and MFU are medians over log
intervals after the first; peak memory is rank 0's (CUDA max allocated, or max RSS on a CPU).
On a GPU machine run it with --nproc 1 --preset gpt2 (and llama3.2-1b) for the GPU table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CONFIGS = [("ddp", "none"), ("ddp", "selective"), ("ddp", "full"), ("zero1", "none")]
CONFIGS += [("fsdp", "none"), ("fsdp", "full")]


@dataclass(frozen=True)
class TrainSettings:
    """The shape of one throughput run, shared by every strategy it is run with."""

    preset: str
    steps: int
    seq_len: int
    micro_batch: int
    batch_tokens: int
    dtype: str
    compile: bool
    log_interval: int = 5


def train_command(
    settings: TrainSettings, out: Path, nproc: int, strategy: str, checkpointing: str,
    data_flags: list[str], extra: tuple[str, ...] = (),
) -> list[str]:  # fmt: skip
    """`lmforge launch --standalone --nproc-per-node N train` of one throughput configuration
    (no evaluation or checkpoint before the last step, no progress bar)."""
    s = settings
    return [
        sys.executable, "-m", "lmforge", "launch", "--standalone", f"--nproc-per-node={nproc}",
        "train", "--model.preset", s.preset, *data_flags,
        "--train.out_dir", str(out), "--train.max_steps", str(s.steps),
        "--train.seq_len", str(s.seq_len), "--train.micro_batch_size", str(s.micro_batch),
        "--train.batch_tokens", str(s.batch_tokens), "--train.dtype", s.dtype,
        "--train.log_interval", str(s.log_interval), "--train.eval_interval", "100000",
        "--train.checkpoint_interval", "100000", "--logging.no_progress_bar",
        "--parallel.strategy", strategy, "--parallel.activation_checkpointing", checkpointing,
        "--train.compile", str(bool(s.compile)), *extra,
    ]  # fmt: skip


def medians(records: list[dict]) -> dict:
    """Tokens/s and MFU medians over log intervals after the first (which includes warm-up and
    compilation), peak memory over all of them, and the last training loss."""
    logged = [r for r in records if "tokens_per_s" in r]
    timed = logged[1:] or logged
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
        "mfu": statistics.median(r["mfu"] for r in timed),
        "peak_memory_gib": max(r["peak_memory_gib"] for r in logged),
        "loss": logged[-1]["loss"],
    }


def run(args, nproc: int, strategy: str, checkpointing: str, work: Path, extra: list[str]):
    settings = TrainSettings(
        args.preset, args.steps, args.seq_len, args.micro_batch, args.batch_tokens, args.dtype,
        args.compile,
    )  # fmt: skip
    out = work / f"{strategy}-{checkpointing}-{nproc}"
    data = ["--data.source", str(args.source), "--data.tokenizer", "byte",
            "--data.dir", str(work / "data")]  # fmt: skip
    command = train_command(settings, out, nproc, strategy, checkpointing, data, tuple(extra))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{strategy}/{checkpointing}/{nproc} failed:\n{done.stdout}\n{done.stderr}")
    return medians([json.loads(line) for line in (out / "metrics.jsonl").open()])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--preset", default="small-llama")
    parser.add_argument("--source", default=str(SHAKESPEARE))
    parser.add_argument("--nproc", default="1,2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--micro_batch", type=int, default=8)
    parser.add_argument("--batch_tokens", type=int, default=16384)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--compile", action="store_true")
    args, extra = parser.parse_known_args()
    from quickstart import machine  # the machine line shared by every benchmark

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (int(n) for n in args.nproc.split(",")):
            for strategy, checkpointing in CONFIGS:
                result = run(args, nproc, strategy, checkpointing, Path(tmp), extra)
                rows.append((nproc, strategy, checkpointing, result))
                print(nproc, strategy, checkpointing, result, flush=True)
    header = (
        f"{datetime.date.today()} | {machine()} | preset {args.preset}, {args.dtype}, "
        f"seq {args.seq_len}, global batch {args.batch_tokens} tokens, micro-batch "
        f"{args.micro_batch}, {args.steps} steps{', compile' if args.compile else ''}"
        f"{' ' + ' '.join(extra) if extra else ''}\n\n"
    )
    table = "| ranks | strategy | activation ckpt | tokens/s | MFU | peak memory GiB (rank 0) |\n"
    table += "|---:|---|---|---:|---:|---:|\n"
    for nproc, strategy, checkpointing, r in rows:
        table += (
            f"| {nproc} | {strategy} | {checkpointing} | {r['tokens_per_s']:,.0f} | "
            f"{100 * r['mfu']:.1f}% | {r['peak_memory_gib']:.2f} |\n"
        )
    print(header + table)
    if args.append:
        with open(REPO / "BENCHMARKS.md", "a") as handle:
            handle.write("\n" + header + table)


if __name__ == "__main__":
    main()
