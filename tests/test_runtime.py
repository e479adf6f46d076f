"""The machine as an input: device, precision, peak, threads and compile decisions.

Which dtype `auto` picks depends on the CPU, so these tests fake the measured matmul rates: an
AMX-like CPU (bf16 ~10x faster) and an AVX2-like one (bf16 ~100x slower) each run everywhere.
"""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch

from lmforge import runtime
from lmforge.errors import ConfigError
from lmforge.runtime import (
    autocast_context,
    choose_compile,
    choose_precision,
    format_flops,
    measure_peak_flops,
    pick_device,
)

CPU = torch.device("cpu")
AMX_LIKE = {"fp32": 100e9, "bf16": 1000e9}
AVX2_LIKE = {"fp32": 99e9, "bf16": 0.8e9}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))


def fake_rates(monkeypatch, rates: dict[str, float]) -> list[tuple[str, int]]:
    """Replace the matmul measurement by fixed rates; returns the list of (dtype, size) measured."""
    calls = []

    def measure(device, dtype_name, size, **_):
        calls.append((dtype_name, size))
        return rates[dtype_name]

    monkeypatch.setattr(runtime, "matmul_flops", measure)
    return calls


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto").type in ("cpu", "mps")
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            pick_device("cuda")


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", "", "xla"])
def test_unknown_devices_are_config_errors(name):
    with pytest.raises(ConfigError, match="device"):
        pick_device(name)


def test_autocast_context():
    assert isinstance(autocast_context(CPU, "fp32"), contextlib.nullcontext)
    with autocast_context(CPU, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16' needs a CUDA GPU"):
        autocast_context(CPU, "fp16")


def test_auto_picks_bf16_where_it_is_fast(monkeypatch):
    fake_rates(monkeypatch, AMX_LIKE)
    precision = choose_precision("auto", CPU)
    assert precision.name == "bf16" and precision.dtype == torch.bfloat16
    assert "1,000 GFLOP/s vs fp32 100" in precision.reason and precision.warning is None


def test_auto_picks_fp32_where_bf16_is_slow_and_says_why(monkeypatch):
    calls = fake_rates(monkeypatch, AVX2_LIKE)
    precision = choose_precision("auto", CPU)
    assert precision.name == "fp32"
    assert precision.reason.startswith("no fast bf16")
    assert "bf16 matmul 0.8 GFLOP/s vs fp32 99" in precision.reason
    # bf16 was only probed at the cheap size: a slow CPU never runs a large bf16 matmul.
    assert ("bf16", runtime.PEAK_SIZE["cpu"]) not in calls


def test_a_marginal_bf16_win_is_not_taken(monkeypatch):
    fake_rates(monkeypatch, {"fp32": 100e9, "bf16": 120e9})
    assert choose_precision("auto", CPU).name == "fp32"


def test_explicit_bf16_on_a_slow_cpu_warns_with_the_ratio_and_proceeds(monkeypatch, tmp_path):
    fake_rates(monkeypatch, AVX2_LIKE)
    precision = choose_precision("bf16", CPU)
    assert precision.name == "bf16"
    assert "124x slower than fp32" in precision.warning
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "another machine"))
    fake_rates(monkeypatch, AMX_LIKE)
    assert choose_precision("bf16", CPU).warning is None


def test_explicit_fp32_measures_nothing(monkeypatch):
    calls = fake_rates(monkeypatch, AVX2_LIKE)
    assert choose_precision("fp32", CPU).name == "fp32" and calls == []


@pytest.mark.parametrize("requested", ["fp16", "int8", "float32"])
def test_unusable_dtypes_are_config_errors(requested):
    with pytest.raises(ConfigError, match=requested):
        choose_precision(requested, CPU)


def test_measurements_are_cached_per_machine(monkeypatch, tmp_path):
    calls = fake_rates(monkeypatch, AVX2_LIKE)
    choose_precision("auto", CPU)
    measured = len(calls)
    assert measured > 0
    choose_precision("auto", CPU)
    assert len(calls) == measured  # the second run reads the cache
    cache = json.loads((tmp_path / "cache" / "lmforge" / "matmul_rates.json").read_text())
    assert all(runtime.cpu_model() in key for key in cache)
    # An emulated older CPU is another machine (whatever the variable says now, change it).
    isa = "SSE41" if runtime.os.environ.get("ONEDNN_MAX_CPU_ISA") == "AVX2" else "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    choose_precision("auto", CPU)
    assert len(calls) > measured


def test_a_corrupt_cache_is_measured_again(monkeypatch, tmp_path):
    calls = fake_rates(monkeypatch, AVX2_LIKE)
    path = tmp_path / "cache" / "lmforge" / "matmul_rates.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert choose_precision("auto", CPU).name == "fp32" and calls


def test_peak_is_measured_in_the_dtype_used_and_never_zero(monkeypatch):
    calls = fake_rates(monkeypatch, AVX2_LIKE)
    assert measure_peak_flops(CPU, "fp32") == 99e9
    assert measure_peak_flops(CPU, "bf16") == 0.8e9
    assert ("bf16", runtime.PEAK_SIZE["cpu"]) not in calls  # slow bf16: the small probe only
    assert format_flops(0.8e9) == "0.8 GFLOP/s" and format_flops(2.2e12) == "2.20 TFLOP/s"


def test_real_matmul_measurement_is_positive_and_quick():
    assert 1e6 < runtime.matmul_flops(CPU, "fp32", 64) < 1e15


def test_compile_auto_weighs_the_run_length(monkeypatch):
    monkeypatch.setattr(runtime.shutil, "which", lambda name: "/usr/bin/c++")
    peak = 100e9
    short = runtime.COMPILE_PAYS_AFTER_S * peak * runtime.CPU_MFU_GUESS / 10
    assert choose_compile("auto", CPU, short, peak)[0] is False
    compile_model, reason = choose_compile("auto", CPU, short * 100, peak)
    assert compile_model and "auto" in reason
    assert choose_compile(True, CPU, 0, peak) == (True, "compile on (requested)")
    assert choose_compile(False, CPU, math.inf, peak)[0] is False
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    assert "no C++ compiler" in choose_compile("auto", CPU, short * 100, peak)[1]


def test_threads_follow_physical_cores_unless_omp_says_otherwise(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert runtime.choose_threads().startswith(f"{runtime.physical_cores()} threads")
        assert torch.get_num_threads() == runtime.physical_cores()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert "OMP_NUM_THREADS" in runtime.choose_threads()
    finally:
        torch.set_num_threads(before)


def test_deterministic_math_turns_on_deterministic_kernels(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        runtime.configure_math(CPU, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.get_float32_matmul_precision() == "highest"
        assert runtime.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
    runtime.configure_math(CPU, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize(("rates", "expected"), [(AMX_LIKE, "int4"), (AVX2_LIKE, "none")])
def test_quantize_auto_follows_fast_bf16(monkeypatch, tmp_path, rates, expected):
    """--quantize auto keeps a GGUF's int4 only where the weight-only kernels are fast."""
    from lmforge.checkpoint.directory import INFO_FILE
    from lmforge.inference.decoding import quantization_plan

    fake_rates(monkeypatch, rates)
    (tmp_path / INFO_FILE).write_text('{"quantization": "int4"}')
    assert quantization_plan(tmp_path, CPU, "auto") == expected
    assert quantization_plan(tmp_path, CPU, "int8") == "int8"  # an explicit choice stands


def test_a_rate_measured_on_a_busy_host_is_measured_again_when_quiet(monkeypatch, tmp_path):
    fake_rates(monkeypatch, {"fp32": 50e9})
    load = {"now": 3.0}
    monkeypatch.setattr(runtime, "host_load", lambda: load["now"])
    path = tmp_path / "cache" / "lmforge" / "matmul_rates.json"
    assert runtime.measured_rate(CPU, "fp32", 64) == 50e9  # measured busy: stored with its load
    assert json.loads(path.read_text()).popitem()[1] == {"rate": 50e9, "load": 3.0}
    fake_rates(monkeypatch, {"fp32": 99e9})
    assert runtime.measured_rate(CPU, "fp32", 64) == 50e9  # still busy: the cache answers
    load["now"] = 0.2
    calls = fake_rates(monkeypatch, {"fp32": 99e9})
    assert runtime.measured_rate(CPU, "fp32", 64) == 99e9 and calls  # quiet now: measured again
    calls = fake_rates(monkeypatch, {"fp32": 10e9})
    assert runtime.measured_rate(CPU, "fp32", 64) == 99e9 and not calls  # a quiet rate stays


def test_an_older_cache_of_bare_numbers_is_still_read(monkeypatch, tmp_path):
    calls = fake_rates(monkeypatch, {"fp32": 1e9})
    monkeypatch.setattr(runtime, "host_load", lambda: 0.0)
    path = tmp_path / "cache" / "lmforge" / "matmul_rates.json"
    path.parent.mkdir(parents=True)
    key = f"{runtime._machine_key(CPU, 64)} | fp32"
    path.write_text(json.dumps({key: 77e9}))
    assert runtime.measured_rate(CPU, "fp32", 64) == 77e9 and not calls
