"""StopSignals: a signal before the first step stops at once; during training it waits for the
step boundary (the checkpoint-and-exit path is tested end to end in test_fault_injection.py)."""

from __future__ import annotations

import os
import signal

import pytest

from lmforge.cli import main
from lmforge.train.signals import StopSignals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_stops_at_once(signum):
    with StopSignals() as signals, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signum)
    assert signals.received is None


def test_a_signal_during_training_waits_for_the_step_boundary():
    with StopSignals() as signals:
        signals.training = True
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == "SIGTERM"


def test_the_cli_reports_a_start_up_interrupt_in_one_line(monkeypatch, capsys, corpus_file):
    from lmforge.train import loop

    def interrupted_preparation(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while "preparing data"
        raise AssertionError("the signal should have stopped the command")

    monkeypatch.setattr(loop.PretrainObjective, "prepare", interrupted_preparation)
    code = main(["train", "--config", "tiny", "--data.source", str(corpus_file)])
    assert code == 130
    assert capsys.readouterr().err == "interrupted\n"
