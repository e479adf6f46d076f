"""Stage 6: the process-group paths on the GPU.

nccl: `lmforge launch --nproc-per-node 1` with parallel.backend=nccl for ddp, zero1 and fsdp (the
three at once: separate processes and communicators on one GPU; the dry run uses gloo and plain
`lmforge train` processes). Each trains 6 steps with
checkpoints at 3 and 6, is rewound to step 3 and resumed; the resumed losses must equal the
uninterrupted ones (RESUME_RTOL: GPU kernels may sum in a different order, the CPU test suite
proves exact resume).

gloo: NCCL refuses two ranks on one GPU, so two torchrun ranks share GPU 0 over gloo with CUDA
tensors (gloo_worker.py), for each strategy; their weights after 3 steps must equal one process
on the whole batch. A strategy gloo cannot run on CUDA tensors is reported, not failed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from gpu_stages.common import (
    LMFORGE,
    TINY_VOCAB,
    CheckFailed,
    StageContext,
    child_env,
    data_flags,
    kill_tree,
    relative_difference,
    tail,
)

STRATEGIES = ("ddp", "zero1", "fsdp")
RESUME_RTOL = 1e-3
TIMEOUT = 120
WORKER = Path(__file__).with_name("gloo_worker.py")


def nccl_command(ctx: StageContext, strategy: str, out: Path, *extra: str) -> list[str]:
    backend, device = ("gloo", "cpu") if ctx.dry_run else ("nccl", "cuda")
    # The dry run saves the launcher's process (its start-up is most of a tiny run's CPU time):
    # a plain process makes itself a one-rank group (zero1, fsdp) instead.
    launcher = [] if ctx.dry_run else ["launch", "--standalone", "--nproc-per-node=1"]
    return [
        *LMFORGE, *launcher, "train",
        "--model.preset", "tiny-llama", "--model.vocab_size", str(TINY_VOCAB), *data_flags(ctx.work),
        "--train.out_dir", str(out), "--train.max_steps", "6", "--train.seq_len", "64",
        "--train.micro_batch_size", "4", "--train.batch_tokens", "256", "--train.dtype", "fp32",
        "--train.device", device, "--train.log_interval", "1", "--train.eval_interval", "3",
        "--train.eval_batches", "1", "--train.checkpoint_interval", "3",
        "--train.peak_tflops", "1", "--logging.no_progress_bar", "--parallel.backend", backend,
        "--parallel.strategy", strategy, *extra,
    ]  # fmt: skip


def run_all(commands: dict[str, list[str]], logs: Path) -> dict[str, str]:
    """Run the commands at once; their outputs, or CheckFailed naming the first that failed."""
    processes = {}
    for name, command in commands.items():
        log = open(logs / f"{name}.log", "w")  # noqa: SIM115 (closed below)
        processes[name] = (
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env()),
            log,
        )
    failed = []
    for name, (process, log) in processes.items():
        try:
            code = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_tree(process)
            code = "timeout"
        log.close()
        if code != 0:
            failed.append(f"{name} ({code}): {tail((logs / f'{name}.log').read_text())}")
    if failed:
        raise CheckFailed("; ".join(failed))
    return {name: (logs / f"{name}.log").read_text() for name in commands}


def losses(run_dir: Path) -> dict[int, float]:
    from lmforge.train.metrics import read_metrics, series

    return dict(series(read_metrics(run_dir), "loss"))


def rewind(run_dir: Path, step: int) -> None:
    """Make the checkpoint at `step` the last one, as if the run had stopped there."""
    checkpoints = run_dir / "checkpoints"
    for later in checkpoints.glob("step-*"):
        if int(later.name.split("-")[1]) > step:
            shutil.rmtree(later)
    for link in ("last", "best"):
        (checkpoints / link).unlink(missing_ok=True)
        (checkpoints / link).symlink_to(f"step-{step:07d}")


def run_nccl(ctx: StageContext) -> None:
    work = ctx.work / "nccl"
    work.mkdir(exist_ok=True)
    data_flags(ctx.work)  # prepared once, before three runs read it at once
    runs = {s: work / s for s in STRATEGIES}
    run_all({s: nccl_command(ctx, s, out) for s, out in runs.items()}, work)
    uninterrupted = {s: losses(out) for s, out in runs.items()}
    for out in runs.values():
        rewind(out, 3)
    outputs = run_all(
        {f"{s}-resume": nccl_command(ctx, s, out, "--resume") for s, out in runs.items()}, work
    )
    problems = []
    for strategy, out in runs.items():
        if "at step 3 (1 ranks)" not in outputs[f"{strategy}-resume"]:
            problems.append(f"{strategy} did not resume from step 3")
            continue
        resumed = losses(out)
        steps = [4, 5, 6]
        error = relative_difference(
            [resumed[s] for s in steps], [uninterrupted[strategy][s] for s in steps]
        )
        ctx.record(f"{strategy}: resumed vs uninterrupted max rel diff", f"{error:.1e}")
        if error > RESUME_RTOL:
            problems.append(f"{strategy} resumed losses differ by {error:.1e} relative")
    ddp = [uninterrupted["ddp"][s] for s in range(1, 7)]
    for strategy in ("zero1", "fsdp"):  # at one rank every strategy is the same arithmetic
        error = relative_difference([uninterrupted[strategy][s] for s in range(1, 7)], ddp)
        ctx.record(f"{strategy} vs ddp losses max rel diff", f"{error:.1e}")
        if error > RESUME_RTOL:
            problems.append(f"{strategy} losses differ from ddp's by {error:.1e} relative")
    if problems:
        raise CheckFailed("; ".join(problems))


def run_gloo(ctx: StageContext) -> None:
    from gpu_stages.gloo_worker import reference_weights

    work = ctx.work / "gloo"
    work.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", str(WORKER), "--strategies", ",".join(STRATEGIES),
               "--device", ctx.device, "--out", str(work)]  # fmt: skip
    with open(work / "workers.log", "w") as log:
        # Started first: the workers' start-up overlaps the reference run below.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env())
        expected = reference_weights(ctx.device)
        try:
            code = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_tree(process)
            code = "timeout"
    if code != 0:
        raise CheckFailed(
            f"the 2 gloo ranks failed ({code}): {tail((work / 'workers.log').read_text())}"
        )
    failures, ran = [], 0
    for strategy in STRATEGIES:
        label = f"{strategy} (2 ranks, gloo, {ctx.device} tensors)"
        if (work / f"{strategy}.error").is_file():
            ctx.record(label, f"does not run: {(work / f'{strategy}.error').read_text()}")
            continue
        error = max_difference(work / f"{strategy}.safetensors", expected)
        ctx.record(label, f"ok, max |w - w_1process| {error:.1e}")
        ran += 1
        if error > 1e-4:
            failures.append(f"{strategy}: weights differ from one process by {error:.1e}")
    if failures:
        raise CheckFailed("; ".join(failures))
    if not ran:
        raise CheckFailed("no strategy ran over gloo")


def max_difference(path: Path, expected: dict) -> float:
    from safetensors.torch import load_file

    weights = load_file(str(path))
    return max((weights[name] - tensor).abs().max().item() for name, tensor in expected.items())
