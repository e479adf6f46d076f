"""Deterministic, resumable, rank-aware batches of finetuning examples (rows or pairs).

As for token windows (data/loader.py), row k of the training stream is a pure function of
(seed, k): epoch k // n is a seeded permutation of the n items. Micro-step m of rank r of W reads
rows cursor + (m * W + r) * B ...; the cursor is the only state. So a run at 2 ranks sees the same
global batches as one process with 2 accumulation steps, and resume is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from lmforge.errors import DataError

Batch = tuple[torch.Tensor, ...]


class ExampleLoader:
    def __init__(
        self,
        items: Sequence,
        collate: Callable[[list], Batch],
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        name: str = "train",
    ):
        if not items:
            raise DataError(f"the {name} split has no usable examples; add data")
        self.items, self.collate = items, collate
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.rows_drawn = 0
        self._order: tuple[int, np.ndarray] | None = None
        # Held-out batches never wrap around: the last one may be short.
        self.num_batches = -(-len(items) // batch_size)

    def _item(self, row: int):
        n = len(self.items)
        epoch, index = divmod(row, n)
        if not self.shuffle:
            return self.items[index]
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
        return self.items[int(self._order[1][index])]

    def _batch(self, rows: range) -> Batch:
        return tuple(t.to(self.device) for t in self.collate([self._item(r) for r in rows]))

    def next(self) -> Batch:
        """This rank's next micro-batch; the cursor moves past every rank's micro-batch."""
        first = self.rows_drawn + self.rank * self.batch_size
        self.rows_drawn += self.world_size * self.batch_size
        return self._batch(range(first, first + self.batch_size))

    def batch_at(self, number: int) -> Batch:
        """Batch `number` in order (evaluation): rows number * B ... (the last one may be short;
        past the end it wraps, for ranks that must run a forward pass without counting it)."""
        number %= self.num_batches
        first = number * self.batch_size
        return self._batch(range(first, min(first + self.batch_size, len(self.items))))

    def state_dict(self) -> dict:
        return {"rows_drawn": self.rows_drawn, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.rows_drawn = int(state["rows_drawn"])


def pad_rows(rows: list[list[int]], value: int, length: int | None = None) -> torch.Tensor:
    """(len(rows), length or the longest) int64, right-padded with value."""
    length = length or max(len(r) for r in rows)
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
