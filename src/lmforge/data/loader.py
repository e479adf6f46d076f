"""Memory-mapped token shards and deterministic, resumable, rank-aware batches of windows.

Every window (row) has a global number k, and row k is a pure function of (seed, split, k):
random sampling seeds a generator with (seed, split, k); sequential sampling takes window
k mod windows-per-epoch of the split's token stream. A global batch is a contiguous range of rows,
split between ranks and micro-steps: micro-step m of rank r of W reads rows
cursor + (m * W + r) * B ... + B - 1. The loader's only state is the cursor (rows handed out), so
resume is exact even with a different number of ranks, micro-batch size or accumulation.

With document_masking, a batch also carries per-token document ids and within-document
positions, so the model attends only inside each document.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmforge.data.prepare import read_index
from lmforge.errors import DataError

SPLIT_IDS = {"train": 0, "val": 1}
SAMPLING = ("random", "sequential")


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
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])  # stream start of each shard

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split's stream (all shards concatenated)."""
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while filled < length:
            local = start + filled - int(self.offsets[shard])
            piece = self.shards[shard][local : local + length - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out


def document_layout(inputs: torch.Tensor, eot_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token document ids and within-document positions of (B, T) token windows.

    An eot ends its document; the token after it starts the next. Ids count from 0 in each row.
    """
    ends = inputs == eot_id
    starts = torch.zeros_like(ends)
    starts[:, 1:] = ends[:, :-1]
    document_ids = starts.long().cumsum(dim=1)
    steps = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
    first = torch.where(starts, steps, torch.zeros_like(steps)).cummax(dim=1).values
    return document_ids, steps - first


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
        *,
        world_size: int = 1,
        sampling: str = "random",
        document_masking: bool = False,
    ):
        if sampling not in SAMPLING:
            raise DataError(f"data.sampling={sampling!r} is not one of {', '.join(SAMPLING)}")
        self.data = TokenShards(directory, split)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.seed, self.rank, self.world_size, self.split = seed, rank, world_size, split
        self.sampling, self.document_masking = sampling, document_masking
        self.eot_id = read_index(Path(directory)).get("eot_id") if document_masking else None
        if document_masking and self.eot_id is None:
            raise DataError(f"{directory} records no eot_id; re-prepare it to use document masking")
        self.device = torch.device(device)
        self.rows_drawn = 0
        # Only shards long enough for one (seq_len + 1) window can be drawn from.
        room = np.array([max(len(s) - seq_len - 1, 0) for s in self.data.shards], dtype=np.float64)
        # Sequential windows overlap by one token so that every token is a target once per epoch.
        self.windows_per_epoch = (self.data.num_tokens - 1) // seq_len
        if room.sum() == 0 and (sampling == "random" or self.windows_per_epoch == 0):
            raise DataError(
                f"the {split} split has {self.data.num_tokens} tokens, too few for one window of "
                f"{seq_len + 1}; add data or lower train.seq_len"
            )
        self.shard_weights = room / max(room.sum(), 1)
        self.room = room.astype(np.int64)

    def _random_windows(self, first: int, count: int) -> np.ndarray:
        windows = np.empty((count, self.seq_len + 1), dtype=np.int64)
        for row in range(count):
            rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], first + row])
            shard_id = rng.choice(len(self.data.shards), p=self.shard_weights)
            start = int(rng.integers(0, self.room[shard_id] + 1))
            windows[row] = self.data.shards[shard_id][start : start + self.seq_len + 1]
        return windows

    def _sequential_windows(self, first: int, count: int) -> np.ndarray:
        windows = np.empty((count, self.seq_len + 1), dtype=np.int64)
        for row in range(count):
            window = (first + row) % self.windows_per_epoch
            windows[row] = self.data.read(window * self.seq_len, self.seq_len + 1)
        return windows

    def rows(self, first: int, count: int) -> tuple[torch.Tensor, ...]:
        """Rows first .. first + count - 1 as (inputs, targets), each (count, seq_len) int64;
        with document masking also (document_ids, positions) of the inputs, for Transformer.forward."""
        if self.sampling == "random":
            windows = self._random_windows(first, count)
        else:
            windows = self._sequential_windows(first, count)
        batch = torch.from_numpy(windows)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        if not self.document_masking:
            return inputs, targets
        return inputs, targets, *document_layout(inputs, self.eot_id)

    def batch_at(self, number: int) -> tuple[torch.Tensor, ...]:
        """Batch `number` of the split on its own (rows number * B ...): eval and overfit use it."""
        return self.rows(number * self.batch_size, self.batch_size)

    def next(self) -> tuple[torch.Tensor, ...]:
        """This rank's next micro-batch; the cursor moves past every rank's micro-batch."""
        batch = self.rows(self.rows_drawn + self.rank * self.batch_size, self.batch_size)
        self.rows_drawn += self.world_size * self.batch_size
        return batch

    def position(self) -> int:
        """Sequential mode: stream offset (tokens) where the next global batch starts."""
        return (self.rows_drawn % self.windows_per_epoch) * self.seq_len

    def state_dict(self) -> dict:
        state = {"rows_drawn": self.rows_drawn, "seed": self.seed, "sampling": self.sampling}
        if self.sampling == "sequential":
            state["position"] = self.position()
        return state

    def load_state_dict(self, state: dict) -> None:
        # Rows are pure functions of their number, so the cursor alone restores the position.
        self.rows_drawn = int(state["rows_drawn"])
