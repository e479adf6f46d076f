"""`lmforge launch [torchrun options] <command> [options]`: torchrun for lmforge commands.

It takes torchrun's own options (--nproc-per-node, --nnodes, --node-rank, --rdzv-endpoint,
--max-restarts, ...) and runs `python -m lmforge <command> ...` in every worker, through
torch.distributed.run itself. What it adds: a thread count per worker that shares the CPU
cores instead of torchrun's blanket 1, and a one-line report (no launcher traceback) when a
worker fails. A worker that hit a user error (exit code 2) has already printed its one line.

Preemption: torchrun forwards a SIGTERM or SIGINT it receives to the workers, which finish the
step, save a checkpoint and exit 0 (see train/signals.py); torchrun then raises SignalException
in the launcher. We turn that into the resume command and exit 0, or 130 when the user pressed
Ctrl-C a second time (the workers then exit at once). Workers get TORCH_ELASTIC_SHUTDOWN_TIMEOUT
seconds (default here 120, torchrun's own is 30) to save before torchrun kills them.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys

from lmforge.errors import ConfigError

REPORTED = (2, 3)  # exit codes of errors the worker already reported in one line


def launch(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    parser = get_args_parser()
    parser.prog = "lmforge launch"

    def one_line_error(message: str):
        raise ConfigError(
            f"lmforge launch: {message}; usage: lmforge launch [torchrun options] <command> "
            "[options] (see lmforge launch --help)"
        )

    parser.error = one_line_error
    args = parser.parse_args(argv)
    if args.training_script.startswith("-") or args.training_script == "launch":
        raise ConfigError(
            "lmforge launch needs an lmforge command after its options, e.g. "
            "`lmforge launch --nproc-per-node 2 train --config tiny`"
        )
    _check_counts(args)
    command = args.training_script
    args.training_script, args.module = "lmforge", True
    args.training_script_args = [command, *args.training_script_args]
    if "OMP_NUM_THREADS" not in os.environ:
        workers = _local_workers(args.nproc_per_node)
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    # The agent logs each failed worker at ERROR level; we report failures ourselves below.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # Its "Received 15 death signal" warning comes from a logger with a level of its own.
    logging.getLogger("torch.distributed.elastic.agent.server.api").setLevel(logging.ERROR)
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "120")
    received = _count_stop_signals()
    try:
        run(args)
    except SignalException as stop:
        return _report_stop(stop.sigval, received, command, argv)
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        if failure.exitcode not in REPORTED:
            print(
                f"error: lmforge {command} failed on rank {rank} (exit code {failure.exitcode}); "
                "its output is above",
                file=sys.stderr,
            )
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def _count_stop_signals() -> list[signal.Signals]:
    """Record each stop signal torchrun's handler receives (it raises SignalException, which
    carries only the last), so that a second Ctrl-C can be told from the first."""
    import torch.distributed.elastic.multiprocessing.api as elastic

    received: list[signal.Signals] = []
    original = elastic._terminate_process_handler

    def counting_handler(signum, frame) -> None:
        received.append(signal.Signals(signum))
        original(signum, frame)

    elastic._terminate_process_handler = counting_handler
    return received


def _report_stop(
    sigval: signal.Signals, received: list[signal.Signals], command: str, argv: list[str]
) -> int:
    if received.count(signal.SIGINT) > 1:
        print("interrupted", file=sys.stderr)
        return 130
    name = signal.Signals(sigval).name
    if command not in ("train", "finetune"):
        print(f"stopped by {name}", file=sys.stderr)
        return 0
    resume = argv if "--resume" in argv else [*argv, "--resume"]
    print(
        f"stopped by {name} (once training had started, the workers saved a checkpoint at the "
        f"end of their step); continue with: lmforge launch {shlex.join(resume)}"
    )
    return 0


def _check_counts(args) -> None:
    """torchrun takes 0 processes or nodes and then divides by it; refuse before starting."""
    if args.nproc_per_node.isdigit() and int(args.nproc_per_node) < 1:
        raise ConfigError(
            f"lmforge launch: --nproc-per-node must be >= 1 (or gpu, cpu, auto), got "
            f"{args.nproc_per_node}"
        )
    low = str(args.nnodes).split(":")[0]
    if not low.isdigit() or int(low) < 1:
        raise ConfigError(
            f"lmforge launch: --nnodes must be >= 1 (N or MIN:MAX), got {args.nnodes}"
        )


def _local_workers(nproc_per_node: str) -> int:
    """Workers on this node, as torchrun counts them: a number, or gpu / cpu / auto (one per
    GPU where there are GPUs). A value torchrun rejects counts 1; torchrun reports it."""
    from torch.distributed.run import determine_local_world_size

    try:
        return max(1, determine_local_world_size(nproc_per_node))
    except ValueError:
        return 1
