"""Stage 1: what the machine is. GPU name, memory, driver, CUDA, torch, NCCL, and the two peaks
MFU is measured against (the data-sheet bf16 peak and a measured bf16 matmul)."""

from __future__ import annotations

import platform
import re
from pathlib import Path

from gpu_stages.common import StageContext, published_peak_tflops


def run(ctx: StageContext) -> None:
    import torch

    from lmforge.runtime import measure_peak_flops

    ctx.record("torch", torch.__version__)
    ctx.record("python", platform.python_version())
    if ctx.dry_run:
        ctx.record("device", cpu_name())
        ctx.record("cpu bf16", cpu_bf16_capability())
        ctx.record("cpu threads", torch.get_num_threads())
        gflops = measure_peak_flops(torch.device("cpu"), "fp32", 512) / 1e9
        ctx.record("measured fp32 matmul GFLOP/s", round(gflops, 1))
        return
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU is visible; run with --dry-run on a CPU machine")
    device = torch.device("cuda", 0)
    properties = torch.cuda.get_device_properties(device)
    ctx.record("device", properties.name)
    ctx.record("gpus visible", torch.cuda.device_count())
    ctx.record("memory GiB", round(properties.total_memory / 2**30, 1))
    ctx.record("compute capability", f"{properties.major}.{properties.minor}")
    ctx.record("driver", nvidia_driver_version())
    ctx.record("CUDA (torch build)", torch.version.cuda)
    nccl = torch.cuda.nccl.version()  # a tuple; an int in older builds
    ctx.record("NCCL", ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl))
    ctx.record("cuDNN", torch.backends.cudnn.version())
    ctx.record("bf16 supported", torch.cuda.is_bf16_supported())
    ctx.record("flash SDPA enabled", torch.backends.cuda.flash_sdp_enabled())
    ctx.record("published bf16 dense TFLOP/s", published_peak_tflops(properties.name))
    ctx.record("measured bf16 matmul TFLOP/s", round(measure_peak_flops(device, "bf16") / 1e12, 1))


def nvidia_driver_version() -> str:
    """The kernel driver's version (e.g. 550.54.15) without needing nvidia-smi."""
    path = Path("/proc/driver/nvidia/version")
    if path.is_file():
        found = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?([\d.]+)", path.read_text())
        if found:
            return found.group(1)
    import torch

    version = torch._C._cuda_getDriverVersion()  # the CUDA API level the driver supports
    return f"supports CUDA {version // 1000}.{version % 1000 // 10}"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_bf16_capability() -> str:
    flags = Path("/proc/cpuinfo").read_text()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return "none (bf16 is emulated: slow)"
