"""Preemption and Ctrl-C: stop at a step boundary with a checkpoint, not mid-write.

The first SIGTERM or SIGINT only records itself; the loop notices it after the current step,
saves a resumable checkpoint and returns. A second SIGINT (an impatient Ctrl-C) aborts at once:
the process exits on the spot (exit code 130), because a KeyboardInterrupt raised in the middle
of a library call can be caught and wrapped by it. Nothing is lost that a crash would not lose:
checkpoints are staged and renamed, so the newest complete one stays intact.

Before the first step (data preparation, tokenizer training, start-up measurements) there is
nothing to save, so a signal stops the command at once, as it would any other program.

Under `lmforge launch` a Ctrl-C in the terminal reaches each worker twice: from the terminal
(the whole process group) and forwarded by torchrun. A second SIGINT within FORWARD_WINDOW_S of
the first is therefore taken as the same interrupt in a torchrun worker.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType

FORWARD_WINDOW_S = 2.0


class StopSignals:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self.training = False
        """Set when the loop starts: from then on a signal waits for the step boundary."""
        self._previous: dict = {}
        self._first_at = 0.0

    def _forwarded_copy(self) -> bool:
        under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
        return under_torchrun and time.monotonic() - self._first_at < FORWARD_WINDOW_S

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and self._forwarded_copy():
            return
        if self.received is not None and signum == signal.SIGINT:
            sys.stderr.write("interrupted\n")
            sys.stderr.flush()
            os._exit(130)
        if not self.training:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        if self.received is None:
            self._first_at = time.monotonic()
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
