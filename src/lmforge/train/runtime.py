"""Device, precision and hardware-peak helpers shared by training, eval and sampling."""

from __future__ import annotations

import contextlib
import time

import torch

from lmforge.config_checks import check_device
from lmforge.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_device(name: str = "auto", key: str = "--device") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    check_device(name, key)
    return torch.device(name)


def autocast_context(device: torch.device, dtype_name: str):
    """Mixed precision: weights stay fp32, matmuls run in bf16/fp16."""
    if dtype_name == "fp32":
        return contextlib.nullcontext()
    if dtype_name == "fp16" and device.type != "cuda":
        raise ConfigError(
            "train.dtype='fp16' needs a CUDA GPU (it uses a GradScaler); use 'bf16' on CPU"
        )
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype_name])


def enable_fast_math(device: torch.device) -> None:
    """TF32 matmuls on Ampere+ GPUs (fp32 math elsewhere is unaffected)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_flops(device: torch.device, dtype_name: str, size: int | None = None) -> float:
    """Best FLOP/s of a large square matmul in the training dtype: the denominator of MFU."""
    size = size or (8192 if device.type == "cuda" else 2048)
    dtype = DTYPES[dtype_name]
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(4):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated by this process, or its peak resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
