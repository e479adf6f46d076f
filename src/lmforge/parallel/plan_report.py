"""`lmforge plan`: the planner's table, one line per layout, and the fastest layout that fits."""

from __future__ import annotations

import dataclasses

import torch

from lmforge.config_checks import check_ranges
from lmforge.errors import ConfigError
from lmforge.parallel.plan_command import PlanCommand, parse_memory
from lmforge.parallel.planner import (
    Estimate,
    GiB,
    PlanInput,
    count_model,
    fastest_fit,
    format_bytes,
    host_memory_available,
    plan_input,
    plan_layouts,
    ranks_to_fit,
)


def plan_budget(command: PlanCommand) -> tuple[str, int, str]:
    """(device kind, bytes per rank, where the figure comes from)."""
    if command.gpu_memory is not None:
        return "cuda", parse_memory(command.gpu_memory), "--gpu-memory"
    wants_gpu = command.run.train.device == "auto" or command.run.train.device.startswith("cuda")
    if wants_gpu and torch.cuda.is_available():
        _, total = torch.cuda.mem_get_info(0)
        return "cuda", total, f"{torch.cuda.get_device_name(0)}"
    available = host_memory_available()
    if available is None:
        raise ConfigError("cannot read this machine's memory; pass --gpu-memory SIZE")
    per_rank = available // command.nproc_per_node
    return "cpu", per_rank, f"host MemAvailable / {command.nproc_per_node} ranks per node"


def check_command(command: PlanCommand) -> None:
    for name in ("nproc_per_node", "nnodes"):
        value = getattr(command, name)
        if value < 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    check_ranges(command.run)


def plan_report(command: PlanCommand) -> tuple[list[str], str | None]:
    """(the lines to print, a refusal when no layout fits)."""
    check_command(command)
    device, budget, source = plan_budget(command)
    world_size = command.nproc_per_node * command.nnodes
    plan = dataclasses.replace(
        plan_input(command.run, world_size, device), ranks_per_node=command.nproc_per_node
    )
    estimates = plan_layouts(plan)
    lines = [_header(plan, command, budget, source), *_table(estimates)]
    best = fastest_fit(estimates, budget)
    if best is None:
        return lines, _refusal(plan, estimates, budget)
    layout = best.layout
    flags = f"--parallel.strategy {layout.strategy}"
    if layout.tensor_parallel > 1:
        flags += f" --parallel.tensor_parallel {layout.tensor_parallel}"
    if layout.cpu_offload:
        flags += " --parallel.cpu_offload"
    if layout.activation_checkpointing != "none":
        flags += f" --parallel.activation_checkpointing {layout.activation_checkpointing}"
    lines.append(
        f"fastest layout that fits: {layout.name}, activation checkpointing "
        f"{layout.activation_checkpointing} ({best.total / GiB:.2f} of {budget / GiB:.2f} GiB "
        f"per rank): {flags}"
    )
    return lines, None


def _header(plan: PlanInput, command: PlanCommand, budget: int, source: str) -> str:
    counts = count_model(plan.model)
    accumulation = f", {plan.accumulation} micro-steps per step" if plan.accumulation > 1 else ""
    return (
        f"{counts.parameters:,} parameters, {plan.dtype}, {plan.optimizer}, micro-batch "
        f"{plan.micro_batch_size} x {plan.seq_len} tokens{accumulation}; {plan.world_size} "
        f"rank{'s' * (plan.world_size > 1)} "
        f"({command.nnodes} x {command.nproc_per_node}); budget {budget / GiB:.2f} GiB per rank "
        f"({source})"
    )


def _table(estimates: list[Estimate]) -> list[str]:
    offload = any(e.layout.cpu_offload for e in estimates)
    columns = ["params", "grads", "optim", "activ", "other", "total"] + ["host"] * offload
    lines = [f"{'layout':<13} {'checkpointing':<13} " + " ".join(f"{c:>7}" for c in columns)]
    for e in estimates:
        values = [e.parameters, e.gradients, e.optimizer, e.activations]
        values += [e.transient + e.overhead, e.total] + [e.host] * offload
        numbers = " ".join(f"{v / GiB:>7.2f}" for v in values)
        lines.append(f"{e.layout.name:<13} {e.layout.activation_checkpointing:<13} {numbers}")
    lines.append(
        "GiB per rank; other: the process itself, and autocast's bf16 weight copies (ddp, zero1) "
        "or the blocks FSDP gathers"
    )
    return lines


def _refusal(plan: PlanInput, estimates: list[Estimate], budget: int) -> str:
    leanest = min(estimates, key=lambda e: e.total)
    layout = leanest.layout
    need = (
        f"nothing fits: the leanest layout ({layout.name}, checkpointing "
        f"{layout.activation_checkpointing}) needs {format_bytes(leanest.total)} per rank; "
        f"{format_bytes(budget)} available: "
    )
    # the fewest ranks at which a sharded layout fits (the faster layout on a tie)
    sharded = [e.layout for e in estimates if e.layout.strategy == "fsdp"]
    fits = [(n, i) for i, x in enumerate(sharded) if (n := ranks_to_fit(plan, x, budget))]
    if not fits:
        fsdp = min((e for e in estimates if e.layout.strategy == "fsdp"), key=lambda e: e.total)
        return need + "no number of ranks is enough: " + _what_does_not_shard(fsdp)
    ranks, index = min(fits)
    layout = sharded[index]
    return need + (
        f"{layout.name} with {layout.activation_checkpointing} checkpointing fits at "
        f"{ranks:,} ranks"
    )


def _what_does_not_shard(fsdp: Estimate) -> str:
    """The largest part of an FSDP rank's memory that more ranks would not divide, and what
    shrinks it."""
    parts = {
        "the activations of one micro-batch": (
            fsdp.activations,
            "lower train.micro_batch_size or train.seq_len",
        ),
        "the embeddings, head and blocks FSDP gathers": (
            fsdp.transient,
            "train a smaller model (width, vocabulary)",
        ),
    }
    name, (size, remedy) = max(parts.items(), key=lambda item: item[1][0])
    return f"{name} alone take {format_bytes(size)}; {remedy}"
