"""`python fault_runner.py POINT STEP ARGS...`: run `lmforge ARGS` and SIGKILL the process at a
named point of writing the checkpoint of step STEP (a fault-injection harness, not a test).

Points, in the order a save goes through them:
    staged            the staging directory exists, nothing is written yet
    sharded-written   the optimizer shards (sharded_state/) are written
    files-written     the model, tokenizer and train state are written, no manifest yet
    manifest-written  the manifest is written; the directory is not renamed into place yet
    renamed           the checkpoint is in place; `last` still points at the previous one
"""

from __future__ import annotations

import os
import re
import signal
import sys

from lmforge.checkpoint import directory as ckpt
from lmforge.checkpoint import run_state
from lmforge.cli import main


def plant(module, name: str, step: int, after: bool) -> None:
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        named = [int(m.group(1)) for a in args for m in [re.search(r"step-(\d{7})", str(a))] if m]
        hit = step in named
        if hit and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if hit and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, name, wrapper)


POINTS = {
    "staged": (run_state, "save_sharded_state", False),
    "sharded-written": (run_state, "save_sharded_state", True),
    "files-written": (ckpt, "write_checkpoint_files", True),
    "manifest-written": (ckpt, "write_manifest", True),
    "renamed": (ckpt, "point_link", False),
}

if __name__ == "__main__":
    point, step, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    module, name, after = POINTS[point]
    plant(module, name, step, after)
    sys.exit(main(args))
