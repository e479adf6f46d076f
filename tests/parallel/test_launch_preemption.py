"""Preemption under `lmforge launch`: SIGTERM to the launcher (what SLURM and Kubernetes send)
reaches both gloo workers, which finish their step, save and exit 0; the launcher prints the
resume command and exits 0, with no traceback anywhere."""

from __future__ import annotations

import json
import signal
import time

from distributed_fixtures import TIMEOUT, popen_launched, write_config


def _logged_steps(run_dir) -> int:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    return sum(1 for line in metrics.read_text().splitlines() if '"loss"' in line)


def test_sigterm_to_the_launcher_saves_and_exits_zero(tmp_path, corpus_file, byte_data_dir):
    write_config(tmp_path / "run.toml", corpus_file, byte_data_dir, max_steps=100_000)
    log = tmp_path / "launch.log"
    args = ["train", "--config", "run.toml", "--train.out_dir", "run"]
    launcher = popen_launched(*args, cwd=tmp_path, log=log)
    deadline = time.monotonic() + TIMEOUT
    while _logged_steps(tmp_path / "run") < 2 and time.monotonic() < deadline:
        assert launcher.poll() is None, log.read_text()
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    code = launcher.wait(timeout=TIMEOUT)
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output and "SignalException" not in output, output[-3000:]
    assert "stopped by SIGTERM" in output and "death signal" not in output
    assert f"--nproc-per-node=2 {' '.join(args)} --resume" in output.splitlines()[-1]
    last = (tmp_path / "run" / "checkpoints" / "last").resolve()
    assert (last / "manifest.json").is_file() and (last / "sharded_state" / ".metadata").is_file()
    saved_step = json.loads((last / "checkpoint.json").read_text())["step"]
    assert 2 <= saved_step < 100_000
