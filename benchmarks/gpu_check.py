"""GPU proof in one command: lmforge's GPU path measured in under 8 minutes on one H100/H200.

    python benchmarks/gpu_check.py [--json PATH] [--append] [--stages a,b] [--budget 465]
    python benchmarks/gpu_check.py --dry-run      # every stage on the CPU at tiny sizes

Stages (benchmarks/gpu_stages/), each in its own process with its own time limit; a stage that
fails or runs out of time is reported and the next one starts:
  environment          GPU, memory, driver, CUDA, torch, NCCL; published and measured bf16 peaks
  correctness          tiny model 20 steps: GPU fp32 (deterministic) vs CPU within 1e-4, bf16
  nccl                 launch --nproc-per-node 1, backend nccl: ddp, zero1, fsdp; save + resume
  meta-fsdp-3b         Llama-3.2-3B built on meta, FSDP, 3 steps: peak memory vs the planner
  throughput-gpt2      GPT-2 124M: bf16, compile, flash SDPA, fused AdamW: tokens/s, MFU, memory
  throughput-llama     Llama-3.2-1B under launch with FSDP: tokens/s, MFU, memory
  decode-smollm2       SmolLM2-135M shape, bf16, static cache + compile, batch 1 and 32
  decode-llama         Llama-3.2-1B shape, the same
  activation-ckpt      Llama-3.2-1B, none/selective/full: largest micro-batch, tokens/s, memory
  gloo-2proc           2 ranks sharing GPU 0 over gloo with CUDA tensors vs one process
The stages' limits add up to more than the budget; they stop being started once the budget
(default 465 s, so the whole run stays under 8 minutes) is spent, and are reported as skipped:
rerun those with --stages. Prints a table; --json writes every result; --append adds the
table to BENCHMARKS.md under the GPU's name. Exit code 0 only when every stage passed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_stages.common import CheckFailed, StageContext, kill_tree, tail  # noqa: E402

# name -> (module:function, time limit in seconds on a GPU)
STAGES = {
    "environment": ("environment:run", 30),
    "correctness": ("correctness:run", 60),
    "nccl": ("distributed:run_nccl", 75),
    "meta-fsdp-3b": ("meta_fsdp:run", 100),
    "throughput-gpt2": ("throughput:run_gpt2", 120),
    "throughput-llama": ("throughput:run_llama", 130),
    "decode-smollm2": ("decode:run_smollm2", 90),
    "decode-llama": ("decode:run_llama", 90),
    "activation-ckpt": ("memory:run", 110),
    "gloo-2proc": ("distributed:run_gloo", 45),
}
DRY_RUN_LIMIT = 300
"""Per stage in a dry run: tiny work, but a shared CPU can be slow to start processes."""
MIN_STAGE_S = 15
"""A stage is not started with less than this left of the budget."""


def run_stage_here(name: str, work: Path, result_file: Path, dry_run: bool) -> int:
    """Inside the stage's own process: run it, write {results, status, error} to result_file."""
    module_name, function = STAGES[name][0].split(":")
    ctx = StageContext(dry_run, work, result_file)
    status, error = "ok", None
    try:
        getattr(importlib.import_module(f"gpu_stages.{module_name}"), function)(ctx)
    except CheckFailed as failure:
        status, error = "failed", str(failure)
    except Exception as exception:  # reported in the table; the traceback goes to the log
        traceback.print_exc()
        status, error = "failed", f"{type(exception).__name__}: {exception}"[:1500]
    ctx.write({"results": ctx.results, "status": status, "error": error})
    return 0


def run_stage(name: str, work: Path, dry_run: bool, limit: float) -> dict:
    """One stage in a fresh process (its own CUDA context), killed with its children at `limit`."""
    result_file, log = work / "results" / f"{name}.json", work / "logs" / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--work", str(work),
               "--result", str(result_file), *(["--dry-run"] if dry_run else [])]  # fmt: skip
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=work)
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            kill_tree(process)
            code = None
    seconds = time.monotonic() - start
    outcome = {"results": {}, "status": "failed", "error": None}
    if result_file.is_file():  # written atomically: whole, or the previous version
        saved = json.loads(result_file.read_text())
        outcome = saved if "status" in saved else outcome | {"results": saved}
    if code is None:
        outcome |= {"status": "timeout", "error": f"stopped at its {limit:.0f} s limit"}
    elif outcome["status"] == "failed" and outcome["error"] is None:
        outcome["error"] = f"exit code {code}: {tail(log.read_text())}"
    return {"name": name, **outcome, "seconds": round(seconds, 1), "limit_s": round(limit)}


def run_all(stages: list[str], work: Path, dry_run: bool, budget: float) -> list[dict]:
    for folder in ("results", "logs"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget
    reports = []
    for name in stages:
        left = deadline - time.monotonic()
        limit = DRY_RUN_LIMIT if dry_run else min(STAGES[name][1], left)
        if not dry_run and left < MIN_STAGE_S:
            reports.append({"name": name, "status": "skipped", "results": {}, "seconds": 0,
                            "limit_s": 0, "error": "the time budget was spent"})  # fmt: skip
        else:
            reports.append(run_stage(name, work, dry_run, limit))
        report = reports[-1]
        print(
            f"{name}: {report['status']} in {report['seconds']} s {report['error'] or ''}",
            flush=True,
        )
    return reports


def table(reports: list[dict]) -> str:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| stage | status | s | results |", "|---|---|---:|---|"]
    for r in reports:
        results = "; ".join(f"{k}: {v}" for k, v in r["results"].items())
        if r["error"]:
            results = f"**{r['error']}** {results}"
        lines.append(f"| {r['name']} | {r['status']} | {r['seconds']} | {cell(results)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU, tiny sizes")
    parser.add_argument("--json", type=Path, help="write every stage's results here")
    parser.add_argument("--append", action="store_true", help="add the table to BENCHMARKS.md")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated, in order")
    parser.add_argument("--budget", type=float, default=465.0, help="seconds for all stages")
    parser.add_argument("--work", type=Path, help="keep logs and runs here (default: a temp dir)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage here
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return run_stage_here(args.stage, args.work, args.result, args.dry_run)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}")
    if args.dry_run:
        # One thread per process: tiny models gain nothing from more, and on a shared CPU two
        # threads that wait for each other at every op made steps 40x slower.
        os.environ["OMP_NUM_THREADS"] = "1"
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    started = time.monotonic()
    try:
        reports = run_all(stages, work.resolve(), args.dry_run, args.budget)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    environment = next((r["results"] for r in reports if r["name"] == "environment"), {})
    device = environment.get("device", "device not identified")
    total = time.monotonic() - started
    summary = {"date": datetime.date.today().isoformat(), "dry_run": args.dry_run,
               "device": device, "environment": environment, "budget_s": args.budget,
               "total_s": round(total, 1), "stages": reports}  # fmt: skip
    header = (
        f"## GPU check{' (dry run on the CPU)' if args.dry_run else ''}: {device}\n\n"
        f"`python benchmarks/gpu_check.py{' --dry-run' if args.dry_run else ''}` on "
        f"{summary['date']}, {total:.0f} s in all. "
        + ", ".join(f"{k} {v}" for k, v in environment.items() if k != "device")
    )
    text = f"{header}\n\n{table(reports)}"
    print(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.append:
        from quickstart import append_to_benchmarks

        append_to_benchmarks(text)
    return 0 if all(r["status"] == "ok" for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
