"""A worker process that runs reward functions under a time limit.

A thread cannot be stopped, so a user's function that loops forever (or a catastrophic regex of
the `format` reward: Python's re holds the GIL and cannot be interrupted) would hang training for
good. Here it runs in a separate process: past the time limit the process is killed, the call
counts as a timeout, and the next call starts a fresh worker. The "spawn" start method is used
because forking a process that holds CUDA or OpenMP state is unsafe; a fresh worker imports
lmforge's light modules and the user's module (not torch) and says it is ready before any call
is timed, so its start-up is never charged to a function.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

from lmforge.errors import one_line

START_LIMIT = 120.0  # seconds for a fresh worker to import the functions' modules


def serve(connection: Any, functions: Sequence[Callable]) -> None:
    """The worker's loop: (index, completion, record) in, ("ok", value) or ("error", text) out."""
    connection.send(("ready", None))
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the parent closed its end or exited
            return
        if message is None:
            return
        index, completion, record = message
        try:
            reply = ("ok", functions[index](completion, record))
        except BaseException as error:  # the user's code may raise anything, SystemExit too
            reply = ("error", one_line(f"{type(error).__name__}: {one_line(error)}", 300))
        try:
            connection.send(reply)
        except Exception as error:  # an unpicklable return value; nothing was written yet
            connection.send(("error", f"its return value cannot be sent back ({one_line(error)})"))


class RewardWorker:
    """Calls `functions[index](completion, record)` in a worker process, at most `limit` s each."""

    def __init__(self, functions: Sequence[Callable]) -> None:
        self._functions = list(functions)
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._connection: Any = None

    def _start(self) -> str | None:
        """A ready worker, or why none started."""
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=serve, args=(child, self._functions), daemon=True, name="lmforge-rewards"
        )
        try:
            process.start()
        except Exception as error:  # e.g. a function that cannot be pickled for the worker
            return f"the reward worker did not start ({one_line(error)})"
        finally:
            child.close()
        self._process, self._connection = process, parent
        try:
            if parent.poll(START_LIMIT) and parent.recv()[0] == "ready":
                return None
        except (EOFError, OSError):
            pass
        self.close()
        return f"the reward worker did not get ready within {START_LIMIT:.0f} s"

    def call(self, index: int, completion: str, record: dict, limit: float) -> tuple[str, Any]:
        """("ok", value), ("error", why) or ("timeout", None); a timed-out worker is killed."""
        if self._process is None or not self._process.is_alive():
            self.close()
            if (why := self._start()) is not None:
                return "error", why
        try:
            self._connection.send((index, completion, record))
            if not self._connection.poll(limit):
                self.close()
                return "timeout", None
            return self._connection.recv()
        except (EOFError, OSError, BrokenPipeError):
            self.close()
            return "error", "the reward worker exited during the call"

    def close(self) -> None:
        """Kill the worker (a running call is abandoned); the next call starts another."""
        if self._process is not None:
            self._process.kill()
            self._process.join()
        if self._connection is not None:
            self._connection.close()
        self._process = self._connection = None
