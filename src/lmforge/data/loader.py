"""Memory-mapped token shards and deterministic, resumable, rank-aware batches of windows.

Batch number n of rank r is a pure function of (seed, split, r, n): the loader's only state is
how many batches it has handed out, so saving that counter makes resume exact.

sampling="random" draws windows at random offsets; sampling="sequential" walks the split's token
stream in order (batch n of rank r of W takes the contiguous windows (n * W + r) * B ... + B - 1,
wrapping around at the end of an epoch). With document_masking, a batch also carries per-token
document ids and within-document positions, so the model attends only inside each document.
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
        self.batches_drawn = 0
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

    def _random_windows(self, number: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], self.rank, number])
        shard_ids = rng.choice(len(self.data.shards), size=self.batch_size, p=self.shard_weights)
        windows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for row, shard_id in enumerate(shard_ids):
            start = int(rng.integers(0, self.room[shard_id] + 1))
            windows[row] = self.data.shards[shard_id][start : start + self.seq_len + 1]
        return windows

    def _sequential_windows(self, number: int) -> np.ndarray:
        first = (number * self.world_size + self.rank) * self.batch_size
        windows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for row in range(self.batch_size):
            window = (first + row) % self.windows_per_epoch
            windows[row] = self.data.read(window * self.seq_len, self.seq_len + 1)
        return windows

    def batch_at(self, number: int) -> tuple[torch.Tensor, ...]:
        """(inputs, targets), each (batch_size, seq_len) int64; with document masking also
        (document_ids, positions) of the inputs, for Transformer.forward."""
        if self.sampling == "random":
            windows = self._random_windows(number)
        else:
            windows = self._sequential_windows(number)
        batch = torch.from_numpy(windows)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        if not self.document_masking:
            return inputs, targets
        return inputs, targets, *document_layout(inputs, self.eot_id)

    def next(self) -> tuple[torch.Tensor, ...]:
        batch = self.batch_at(self.batches_drawn)
        self.batches_drawn += 1
        return batch

    def position(self) -> int:
        """Sequential mode: stream offset (tokens) where this rank's next batch starts."""
        first = (self.batches_drawn * self.world_size + self.rank) * self.batch_size
        return (first % self.windows_per_epoch) * self.seq_len

    def state_dict(self) -> dict:
        state = {"batches_drawn": self.batches_drawn, "seed": self.seed, "rank": self.rank}
        if self.sampling == "sequential":
            state |= {"sampling": "sequential", "position": self.position()}
        return state

    def load_state_dict(self, state: dict) -> None:
        # Batches are pure functions of their number, so the counter alone restores the position.
        self.batches_drawn = int(state["batches_drawn"])
