"""Writing one split's token stream as fixed-size shards, and the resume state of `prepare`.

Shards are written as `.tmp` and renamed, so a shard file under its final name is complete.
After each finished shard, `progress.json` records the shards so far and the documents consumed;
the tokens past the last shard boundary are saved beside it first, so a crash between the two
writes never loses or repeats tokens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

PROGRESS = "progress.json"


class ShardWriter:
    """Cuts one split's token stream into shards of exactly shard_tokens (the last: fewer)."""

    def __init__(self, directory: Path, split: str, size: int, shards: list, pending: np.ndarray):
        self.directory, self.split, self.size = directory, split, size
        self.shards, self.parts, self.count = shards, [pending], len(pending)

    def add(self, tokens: np.ndarray) -> bool:
        """Append tokens; True if a shard was completed."""
        self.parts.append(tokens)
        self.count += len(tokens)
        wrote = False
        while self.count >= self.size:
            self._write(self.size)
            wrote = True
        return wrote

    def pending(self) -> np.ndarray:
        self.parts = [np.concatenate(self.parts)] if len(self.parts) != 1 else self.parts
        return self.parts[0]

    def _write(self, n: int) -> None:
        tokens = self.pending()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        tokens[:n].tofile(self.directory / (name + ".tmp"))
        os.replace(self.directory / (name + ".tmp"), self.directory / name)
        self.shards.append({"file": name, "tokens": int(n)})
        self.parts, self.count = [tokens[n:]], len(tokens) - n

    def finish(self) -> list[dict]:
        if self.count:
            self._write(self.count)
        return self.shards


def save_progress(staging: Path, state: dict, writers: dict[str, ShardWriter]) -> None:
    """Pending remainders first (new names), then progress.json atomically, then old pendings go."""
    step = state.get("checkpoint", 0) + 1
    for split, writer in writers.items():
        writer.pending().tofile(staging / f"{split}.pending-{step}")
    state = {**state, "checkpoint": step, "splits": {s: w.shards for s, w in writers.items()}}
    (staging / (PROGRESS + ".tmp")).write_text(json.dumps(state))
    os.replace(staging / (PROGRESS + ".tmp"), staging / PROGRESS)
    for split in writers:
        (staging / f"{split}.pending-{step - 1}").unlink(missing_ok=True)


def load_progress(staging: Path, fp: dict) -> dict | None:
    path = staging / PROGRESS
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state if state.get("fingerprint") == fp else None
