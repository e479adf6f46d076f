"""The machine as an input: device, precision, threads, compile and the peak FLOP/s for MFU.

Whether bf16 is fast is a property of the CPU, not of PyTorch: on an AMX Xeon a bf16 matmul runs
~6x faster than fp32, on an AVX2-only AMD EPYC ~100x slower (0.8 vs 99 GFLOP/s). So `auto`
precision is decided by a short matmul measurement (a few hundred ms at most, cached per machine
in ~/.cache/lmforge), never assumed from the device type, and the choice is logged with its
reason on a run's first line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")

BF16_FASTER = 1.5
"""`auto` picks bf16 on a CPU only when its matmul is at least this much faster than fp32's:
autocast's casts cost a small step ~25% (BENCHMARKS.md), so a marginal win would be a loss."""

PROBE_SIZE = 256
"""First, cheap probe: 34 MFLOP, ~40 ms even at the 0.8 GFLOP/s of bf16 on an AVX2-only CPU."""

PEAK_SIZE = {"cpu": 1024, "cuda": 8192}
"""Square matmul for the peak: ~20 ms in fp32 on a slow 2-core CPU, ~1 ms in bf16 on AMX."""


def check_device(name: str, key: str = "train.device") -> None:
    """A device string that names a backend this machine has (auto is always fine)."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ConfigError(
            f"{key}={name!r} is not a device lmforge can use; use auto, cpu, cuda[:N], mps or xpu"
        )
    backend = getattr(torch, device.type, None) if device.type in ("cuda", "xpu") else None
    available = {
        "cpu": True,
        "mps": torch.backends.mps.is_available(),
    }.get(device.type, backend is not None and backend.is_available())
    if not available:
        label = {"cuda": "CUDA GPU", "mps": "Apple MPS GPU", "xpu": "Intel XPU"}[device.type]
        raise ConfigError(f"{key}={name!r} but no {label} is visible; use auto or cpu")
    if backend is not None and device.index is not None and device.index >= backend.device_count():
        raise ConfigError(
            f"{key}={name!r} but only {backend.device_count()} {device.type} device(s) are "
            f"visible; use an index below {backend.device_count()}"
        )


def pick_device(name: str = "auto", key: str = "--device") -> torch.device:
    """The device `name` names (auto: cuda, then mps, then cpu); `key` is the option that gave
    it, for the one-line error (check_device) when this machine lacks it."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    check_device(name, key)
    return torch.device(name)


def cpu_bf16_units() -> str:
    """The CPU's native bf16 matmul units as /proc/cpuinfo names them: AMX, AVX512-BF16, or none."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "unknown"
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return "ARM-BF16" if "bf16" in flags else "none"


EMULATION = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
"""Environment variables that make PyTorch's and oneDNN's kernels those of an older CPU (e.g.
avx2 / AVX2 on an AMX Xeon: bf16 matmuls then run as slowly as on an AVX2-only CPU)."""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary() -> str:
    """One line for benchmark tables: CPU model, bf16 units, cores and torch version."""
    emulated = [f"{k}={os.environ[k]}" for k in EMULATION if os.environ.get(k)]
    return (
        f"{cpu_model()} (bf16 units: {cpu_bf16_units()}), {os.cpu_count()} cores, "
        f"torch {torch.__version__}"
        + (f", emulating an older CPU: {' '.join(emulated)}" if emulated else "")
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(
    device: torch.device, dtype_name: str, size: int, seconds: float = 0.1, most: int = 20
) -> float:
    """Best FLOP/s of a square matmul after an untimed warm-up: repeated for about `seconds`
    (at least twice, at most `most` times), so a fast matmul is timed often enough to shake
    off a busy host and a slow one costs little."""
    dtype = DTYPES[dtype_name]
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    best, spent, repeats = float("inf"), 0.0, 0
    while repeats < 2 or (spent < seconds and repeats < most):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        took = time.perf_counter() - start
        best, spent, repeats = min(best, took), spent + took, repeats + 1
    return 2 * size**3 / max(best, 1e-9)


def _cache_path() -> Path:
    root = os.environ.get("LMFORGE_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    return Path(root or Path.home() / ".cache") / "lmforge" / "matmul_rates.json"


def _machine_key(device: torch.device, size: int) -> str:
    """What a measurement depends on. The two ISA variables make PyTorch and oneDNN behave like
    an older CPU, so they are part of the machine."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{cpu_model()} | {cpu_bf16_units()} | threads {torch.get_num_threads()}"
    isa = "/".join(os.environ.get(name, "") for name in EMULATION)
    return f"{device.type} | {hardware} | {isa} | torch {torch.__version__} | {size}"


BUSY_LOAD = 1.0
"""Runnable threads per CPU (the 1-minute load average) above which the host counts as busy: a
rate measured then is kept only until a run on a quieter host measures again."""


def host_load() -> float:
    """The 1-minute load average per logical CPU; 0 where the OS reports none."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return 0.0


def _cached_rate(entry: object) -> tuple[float | None, float]:
    """(rate, load when measured) of a cache entry; a bare number (older caches) was quiet."""
    if isinstance(entry, float) and entry > 0:
        return entry, 0.0
    if isinstance(entry, dict) and isinstance(entry.get("rate"), float) and entry["rate"] > 0:
        load = entry.get("load")
        return entry["rate"], load if isinstance(load, int | float) else 0.0
    return None, 0.0


def measured_rate(device: torch.device, dtype_name: str, size: int) -> float:
    """matmul_flops, cached per machine: a run's start-up pays for the measurement once. A rate
    measured on a busy host (which reads low, and would make MFU read high for good) is measured
    again by the next run that finds the host quiet, and the higher of the two is kept."""
    path = _cache_path()
    key = f"{_machine_key(device, size)} | {dtype_name}"
    try:
        cache = json.loads(path.read_text())
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}
    cached, load_then = _cached_rate(cache.get(key))
    load_now = host_load()
    if cached is not None and not (load_then > BUSY_LOAD >= load_now):
        return cached
    rate = max(matmul_flops(device, dtype_name, size), cached or 0.0)
    with contextlib.suppress(OSError):  # a read-only home only costs the next run a re-measure
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        entry = {"rate": rate, "load": round(load_now, 2)}
        staging.write_text(json.dumps(cache | {key: entry}, indent=1))
        staging.replace(path)
    return rate


@dataclass(frozen=True)
class Precision:
    """The compute dtype a run uses and why, for the first log line."""

    name: str
    reason: str
    warning: str | None = None
    """Set when the requested dtype is much slower here than what `auto` would pick."""

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]


def _gflops(rate: float) -> str:
    return f"{rate / 1e9:,.1f}" if rate < 1e10 else f"{rate / 1e9:,.0f}"


def cpu_bf16_speedup(device: torch.device) -> tuple[float, float, float]:
    """(bf16 / fp32 matmul rate, bf16 rate, fp32 rate) on this CPU. bf16 is probed small first,
    so a CPU where it is slow pays ~0.2 s; where the probe is not clearly slower, bf16 is
    measured again at the realistic width fp32 is measured at."""
    fp32 = measured_rate(device, "fp32", PEAK_SIZE["cpu"])
    bf16 = measured_rate(device, "bf16", PROBE_SIZE)
    if bf16 * 2 > fp32:
        bf16 = measured_rate(device, "bf16", PEAK_SIZE["cpu"])
    return bf16 / fp32, bf16, fp32


def choose_precision(requested: str, device: torch.device) -> Precision:
    """The dtype for `auto` (bf16 where the hardware runs it fast, fp16 on older GPUs, else
    fp32), or the requested one, after checking it can run here."""
    if requested not in ("auto", *DTYPES):
        raise ConfigError(f"dtype '{requested}' is unknown; use auto, bf16, fp16 or fp32")
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError(
            "dtype 'fp16' needs a CUDA GPU (it uses a GradScaler); use 'auto', 'fp32' or 'bf16'"
        )
    if device.type == "cuda":
        if requested != "auto":
            return Precision(requested, "requested")
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", f"{torch.cuda.get_device_name(device)} has bf16")
        return Precision("fp16", "this GPU has no bf16; fp16 with a gradient scaler")
    if device.type != "cpu":
        return Precision("fp32" if requested == "auto" else requested, f"{device.type}")
    if requested == "fp32":
        return Precision("fp32", "requested")
    ratio, bf16, fp32 = cpu_bf16_speedup(device)
    rates = f"bf16 matmul {_gflops(bf16)} GFLOP/s vs fp32 {_gflops(fp32)}"
    if requested == "bf16":
        warning = None
        if ratio < 1:
            warning = (
                f"dtype bf16 on a CPU without fast bf16 ({rates}, {cpu_bf16_units()} units) "
                f"runs ~{1 / ratio:.0f}x slower than fp32; use dtype 'auto' or 'fp32'"
            )
        return Precision("bf16", f"requested; {rates}", warning)
    if ratio >= BF16_FASTER:
        return Precision("bf16", f"fast bf16 (bf16 units: {cpu_bf16_units()}): {rates}")
    return Precision("fp32", f"no fast bf16 (bf16 units: {cpu_bf16_units()}): {rates}")


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matmuls pay on this device: what `auto` precision and quantized layers use."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16_speedup(device)[0] >= BF16_FASTER


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


def configure_math(device: torch.device, deterministic: bool) -> None:
    """TF32 on GPUs, or (deterministic) exact fp32 matmuls and deterministic kernels only, so a
    GPU run repeats bitwise; a kernel with no deterministic version then raises."""
    if not deterministic:
        enable_fast_math(device)
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic mode
    torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def measure_peak_flops(device: torch.device, dtype_name: str, size: int | None = None) -> float:
    """The denominator of MFU: the best rate of a square matmul in the dtype the run computes in,
    sized to take well under a second even where that dtype is slow, and cached per machine."""
    if size is not None:
        return matmul_flops(device, dtype_name, size)
    if device.type == "cpu" and dtype_name == "bf16" and not bf16_is_fast(device):
        return measured_rate(device, dtype_name, PROBE_SIZE)
    return measured_rate(device, dtype_name, PEAK_SIZE.get(device.type, PEAK_SIZE["cpu"]))


def physical_cores() -> int:
    """Physical cores this process may run on (hyperthread siblings counted once)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(1)
    cores = set()
    for cpu in allowed:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores) if cores else os.cpu_count() or 1)


def choose_threads() -> str:
    """Intra-op threads: OMP_NUM_THREADS when set (`lmforge launch` sets cores per worker),
    else one per physical core; hyperthreads share a core's matmul units and only add contention."""
    if os.environ.get("OMP_NUM_THREADS"):
        return f"{torch.get_num_threads()} threads (OMP_NUM_THREADS)"
    cores = physical_cores()
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    return f"{cores} threads (one per physical core)"


COMPILE_PAYS_AFTER_S = 300.0
"""`compile auto` on a CPU: compiling a small model took 14-37 s for a 1.35x faster step
(BENCHMARKS.md), so it pays once the eager run would take several minutes."""

CPU_MFU_GUESS = 0.3
"""Eager MFU assumed when estimating a CPU run's length (measured 22-57%, BENCHMARKS.md)."""


def choose_compile(
    setting: bool | str,
    device: torch.device,
    run_flops: float,
    peak: float,
    time_budget: float | None = None,
) -> tuple[bool, str]:
    """Whether to torch.compile the model, and why: `auto` compiles on GPUs, and on a CPU when
    the run is long enough (estimated from its FLOPs and the measured peak, capped by its time
    budget) to repay compiling."""
    if setting is True or setting == "on":
        return True, "compile on (requested)"
    if setting is False or setting == "off":
        return False, "compile off (requested)"
    if device.type == "cuda":
        return True, "compile on (auto: GPU)"
    if device.type != "cpu":
        return False, f"compile off (auto: {device.type})"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return False, "compile off (auto: no C++ compiler for Inductor)"
    estimate = min(run_flops / (peak * CPU_MFU_GUESS), time_budget or math.inf)
    if estimate >= COMPILE_PAYS_AFTER_S:
        return True, f"compile on (auto: ~{estimate / 60:.0f} min eager run)"
    return False, f"compile off (auto: ~{estimate:.0f} s eager run < {COMPILE_PAYS_AFTER_S:.0f} s)"


def format_flops(rate: float) -> str:
    """A FLOP/s figure with a unit that never rounds it to 0."""
    if rate >= 1e12:
        return f"{rate / 1e12:.2f} TFLOP/s"
    return f"{rate / 1e9:.1f} GFLOP/s"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated by this process, or its peak resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
