"""Preemption and Ctrl-C: stop at a step boundary with a checkpoint, not mid-write.

The first SIGTERM or SIGINT only records itself; the loop notices it after the current step,
saves a resumable checkpoint and returns. A second SIGINT (an impatient Ctrl-C) aborts at once:
the process exits on the spot (exit code 130), because a KeyboardInterrupt raised in the middle
of a library call can be caught and wrapped by it. Nothing is lost that a crash would not lose:
checkpoints are staged and renamed, so the newest complete one stays intact.

Before the first step (data preparation, tokenizer training, start-up measurements) there is
nothing to save, so a signal stops the command at once, as it would any other program.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType


class StopSignals:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self.training = False
        """Set when the loop starts: from then on a signal waits for the step boundary."""
        self._previous: dict = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            sys.stderr.write("interrupted\n")
            sys.stderr.flush()
            os._exit(130)
        if not self.training:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
