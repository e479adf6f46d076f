"""Will a model's weights fit in this machine's memory? Asked before anything is allocated.

A config whose every field is in range can still describe a model no machine holds: width 2^20
with a 2^24-token vocabulary is 70 TB of fp32 embedding alone. Loading one used to fail inside
torch's allocator (a traceback, or a bare RuntimeError from `lmforge.load`), or, with overcommit,
after the system started swapping. `refuse_if_too_large` counts the parameters on the meta device
(no storage) and compares them with the memory free now, in one line. A memory planner can reuse
`weights_bytes` and `available_bytes` for its own estimates.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import ResourceError, one_line
from lmforge.models.config import ModelConfig
from lmforge.models.counting import build_on_meta

# What `bytes_per_param` holds, in messages (8: merge keeps a state dict and a model in fp32).
_WHAT = {4: "fp32 weights", 2: "16-bit weights", 1: "8-bit weights", 8: "fp32 weights, twice"}


def format_bytes(count: float) -> str:
    """Decimal units, as disks and `free -h --si` count them: '70 TB', '24 GB', '512 kB'."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if count < 1000 or unit == "EB":
            return f"{count:.0f} {unit}" if count >= 10 or unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _position_table_bytes(config: ModelConfig) -> int:
    # RoPE cos/sin and sinusoidal tables are fp32, made lazily by the first forward pass
    # (Transformer.rope), one row per position: a huge context_length costs memory there.
    if config.position == "rope":
        return 2 * config.context_length * config.rope_dim * 4
    if config.position == "sinusoidal":
        return config.context_length * config.dim * 4
    return 0


def weights_bytes(config: ModelConfig, dtype_bytes: int = 4) -> int:
    """Bytes of the model's parameters at `dtype_bytes` each, plus its buffers as they are.
    The config must have passed validate() (build_on_meta builds whatever it is given)."""
    if config.vocab_size is None:  # follows the tokenizer; a byte tokenizer is the smallest
        config = dataclasses.replace(config, vocab_size=256)
    try:
        model = build_on_meta(config)
    except (RuntimeError, OverflowError) as error:  # a shape beyond int64 (sizes multiplied)
        raise ResourceError(
            f"model config describes tensors too large to represent ({one_line(error, 120)}); "
            "use a smaller model"
        ) from None
    parameters = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return parameters * dtype_bytes + buffers


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    # A container's limit (cgroup v2) can be far below the host's MemAvailable.
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory free for new tensors on `device` now: a GPU's free memory; for the CPU, Linux's
    MemAvailable within any container limit (else physical memory). None when it cannot tell."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    found = [b for b in (_meminfo_available(), _cgroup_available()) if b is not None]
    if found:
        return min(found)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def refuse_if_too_large(
    config: ModelConfig,
    where: str,
    bytes_per_param: int = 4,
    device: torch.device | str = "cpu",
) -> int:
    """ResourceError naming `where` (the file or command) when the weights (plus the position
    tables the first forward pass makes) exceed the memory free on `device`; else the bytes they
    need. Nothing is allocated."""
    weights = weights_bytes(config, bytes_per_param)
    tables = _position_table_bytes(config)
    free = available_bytes(device)
    if free is None or weights + tables <= free:
        return weights + tables
    what = _WHAT.get(bytes_per_param, f"weights at {bytes_per_param} bytes each")
    needs = f"{format_bytes(weights + tables)} of {what}"
    if tables > weights:  # name the field that makes it big
        needs = (
            f"{format_bytes(weights)} of {what} and {format_bytes(tables)} of position tables "
            "(model.context_length)"
        )
    place = "free" if torch.device(device).type == "cpu" else f"free on {device}"
    raise ResourceError(
        f"{where}: model needs {needs}; {format_bytes(free)} {place}. Use a smaller model or a "
        "machine with more memory"
    )


def materialize(model: nn.Module, device: torch.device | str, where: str) -> nn.Module:
    """`model.to_empty(device)` for a meta-device model; an allocation failure (the estimate was
    optimistic: another process took the memory meanwhile) is one ResourceError, not torch's."""
    try:
        return model.to_empty(device=device)
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        if not isinstance(error, MemoryError) and "alloc" not in str(error).lower():
            raise
        raise ResourceError(
            f"{where}: could not allocate the model's weights ({one_line(error, 160)}); free "
            "memory or use a smaller model"
        ) from None
