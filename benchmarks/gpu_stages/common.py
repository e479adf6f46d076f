"""What every gpu_check stage shares: the stage context, the corpus, process control, GPU peaks.

A stage is `run(ctx)`: it records results as it goes (so a stage that times out still reports
what it measured) and raises CheckFailed when a measured result breaks its check.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LMFORGE = [sys.executable, "-m", "lmforge"]

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s. Matched in
# order against torch.cuda.get_device_name(): more specific names first ("H100 NVL" before
# "H100"; "L40S" before "L4"). The H100 and H200 SXM parts share the same tensor cores.
PUBLISHED_BF16_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM5, e.g. "NVIDIA H100 80GB HBM3"
    ("A100", 312.0),  # SXM4 and PCIe alike
    ("L40S", 362.1),
    ("L4", 121.0),
)


def published_peak_tflops(device_name: str) -> float | None:
    for marker, tflops in PUBLISHED_BF16_TFLOPS:
        if marker.lower() in device_name.lower():
            return tflops
    return None


TINY_VOCAB = 320
"""Dry-run and tiny models: the byte tokenizer's 257 tokens rounded up to a multiple of 64."""


class CheckFailed(Exception):
    """A stage ran but a measured result failed its check (the message says which)."""


@dataclass
class StageContext:
    """What a stage process gets: its sizes (dry run or GPU), a work directory, a results file."""

    dry_run: bool
    work: Path
    result_file: Path
    results: dict = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def record(self, key: str, value) -> None:
        """Keep a result, rewriting the results file at once (it survives a timeout)."""
        self.results[key] = value
        self.write(self.results)

    def write(self, content: dict) -> None:
        """Replace the results file atomically: a kill never leaves half a file."""
        staging = self.result_file.with_suffix(".tmp")
        staging.write_text(json.dumps(content))
        os.replace(staging, self.result_file)

    def log(self, message: str) -> None:
        print(message, flush=True)


def corpus_file(work: Path, size: int = 1_500_000) -> Path:
    """Training text every machine has: the Python standard library's own source, ~1.5 MB."""
    path = work / "corpus.txt"
    if not path.is_file():
        chunks, total = [], 0
        for source in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
            text = source.read_text(errors="replace")
            chunks.append(text)
            total += len(text)
            if total >= size:
                break
        path.write_text("".join(chunks))
    return path


def prepared_data(work: Path) -> Path:
    """Byte-tokenized shards of the corpus, prepared once (before concurrent runs read them)."""
    from lmforge.config import DataConfig
    from lmforge.data.prepare import prepare

    config = DataConfig(
        source=str(corpus_file(work)), tokenizer="byte", dir=str(work / "data"), workers=1
    )
    return prepare(config, progress=False)


def data_flags(work: Path) -> list[str]:
    """`lmforge train` flags for the prepared corpus."""
    data_dir = prepared_data(work)
    return ["--data.source", str(corpus_file(work)), "--data.tokenizer", "byte",
            "--data.dir", str(data_dir)]  # fmt: skip


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), including torchrun's workers, which run in
    sessions of their own and so escape a process-group kill."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            queue += children
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process we started and everything below it, then wait until all are gone (so
    the GPU memory they held is free for the next stage)."""
    victims = descendants(process.pid)
    if process.poll() is None:  # a reaped pid may already belong to another process
        victims.append(process.pid)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in victims):
        time.sleep(0.1)


def run_checked(command: list[str], log: Path, timeout: float, env: dict | None = None) -> str:
    """Run a command to completion (output to `log`); raise CheckFailed with its tail if it fails."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env or child_env(), cwd=log.parent
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(process)
            raise CheckFailed(f"{' '.join(command[2:5])} ran past {timeout:.0f} s") from None
    text = log.read_text()
    if code != 0:
        raise CheckFailed(f"exit code {code}: {tail(text)}")
    return text


def run_until_logged(
    command: list[str], metrics: Path, intervals: int, log: Path, timeout: float
) -> list[dict]:
    """Run `lmforge train` until its metrics.jsonl holds `intervals` throughput records, then
    kill it: the final evaluation and checkpoint (gigabytes for a 1B model) are never timed
    and never written. Returns those records."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=log.parent
        )
        deadline = time.monotonic() + timeout
        records: list[dict] = []
        try:
            while time.monotonic() < deadline and process.poll() is None:
                records = _throughput_records(metrics)
                if len(records) >= intervals:
                    return records[:intervals]
                time.sleep(0.2)
        finally:
            kill_tree(process)
    records = _throughput_records(metrics)
    if len(records) >= intervals:
        return records[:intervals]
    why = f"exit code {process.returncode}" if time.monotonic() < deadline else "time limit"
    raise CheckFailed(f"{why} after {len(records)} log intervals: {tail(log.read_text())}")


def _throughput_records(metrics: Path) -> list[dict]:
    if not metrics.is_file():
        return []
    lines = metrics.read_text().splitlines()
    complete = [line for line in lines if line.endswith("}")]  # the last may be half-written
    return [r for r in map(json.loads, complete) if "tokens_per_s" in r]


def child_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])[-1500:]


def relative_difference(values: list[float], reference: list[float]) -> float:
    """The largest |a - b| / |b| over paired values."""
    return max(abs(a - b) / abs(b) for a, b in zip(values, reference, strict=True))
