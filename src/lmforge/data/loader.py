"""Memory-mapped token shards and deterministic, resumable, rank-aware batches of windows.

Batch number n of rank r is a pure function of (seed, split, r, n): the loader's only state is
how many batches it has handed out, so saving that counter makes resume exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmforge.data.prepare import read_index
from lmforge.errors import DataError

SPLIT_IDS = {"train": 0, "val": 1}


class TokenShards:
    """All shards of one split, memory-mapped (nothing is read until a window is drawn)."""

    def __init__(self, directory: str | Path, split: str):
        directory = Path(directory)
        index = read_index(directory)
        dtype = np.dtype(index["dtype"])
        self.shards = [
            np.memmap(directory / s["file"], dtype=dtype, mode="r") for s in index["splits"][split]
        ]
        self.num_tokens = sum(len(s) for s in self.shards)


class BatchLoader:
    def __init__(
        self,
        directory: str | Path,
        split: str,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.data = TokenShards(directory, split)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.seed, self.rank, self.split = seed, rank, split
        self.device = torch.device(device)
        self.batches_drawn = 0
        # Only shards long enough for one (seq_len + 1) window can be drawn from.
        room = np.array([max(len(s) - seq_len - 1, 0) for s in self.data.shards], dtype=np.float64)
        if room.sum() == 0:
            raise DataError(
                f"the {split} split has {self.data.num_tokens} tokens, too few for one window of "
                f"{seq_len + 1}; add data or lower train.seq_len"
            )
        self.shard_weights = room / room.sum()
        self.room = room.astype(np.int64)

    def batch_at(self, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets, each (batch_size, seq_len) int64."""
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], self.rank, number])
        shard_ids = rng.choice(len(self.data.shards), size=self.batch_size, p=self.shard_weights)
        windows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for row, shard_id in enumerate(shard_ids):
            start = int(rng.integers(0, self.room[shard_id] + 1))
            windows[row] = self.data.shards[shard_id][start : start + self.seq_len + 1]
        batch = torch.from_numpy(windows)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch_at(self.batches_drawn)
        self.batches_drawn += 1
        return batch

    def state_dict(self) -> dict:
        return {"batches_drawn": self.batches_drawn, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        self.batches_drawn = int(state["batches_drawn"])
