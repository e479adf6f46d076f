"""mu > 1: one generation batch trains mu optimizer steps (GRPO's inner iterations).

A cycle is mu optimizer steps. Its first step samples fresh completions (one rollout per
micro-batch) and keeps each rollout with the log-probs of the policy that sampled it (old_logp);
the next mu - 1 steps train on the same rollouts again, so their ratio new/old moves away from 1
and the clip acts. `ReplayLoader` draws prompts only on a cycle's first step, so the data order
and the sampling seeds are those of a run with mu = 1 that takes one step per cycle.

A checkpoint written mid-cycle must hold the rollouts of every rank, since the policy that
sampled them is gone. `pack_rollouts` sums each rank's slot of a zero tensor over the ranks (one
all-reduce, plain tensors: nothing to unpickle), and `unpack_rollouts` gives each rank its slot
back; rank 0 writes them into train_state.pt with the loader cursor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.data.example_loader import ExampleLoader
from lmforge.errors import CheckpointError
from lmforge.parallel.dist import DistInfo, sum_over_ranks

Batch = tuple[torch.Tensor, ...]


@dataclass
class Rollout:
    """One micro-batch's sampled rows, kept for the cycle's later steps."""

    inputs: torch.Tensor  # (R, T) prompt + completion, right-padded
    targets: torch.Tensor  # (R, T) completion tokens, IGNORE elsewhere
    old_logp: torch.Tensor  # (R, T) log-probs under the sampling policy
    ref_logp: torch.Tensor | None  # (R, T) under the reference; None when beta = 0
    advantages: torch.Tensor  # (R,)


class ReplayLoader:
    """GRPO's train loader: `inner.next()` on a cycle's first step; after it, the same micro-batch
    positions again (`fresh` False, `micro` says which rollout to train on)."""

    def __init__(self, inner: ExampleLoader, accumulation: int, mu: int) -> None:
        self.inner, self.accumulation = inner, accumulation
        self.device = inner.device
        self.period = accumulation * mu  # loss calls per cycle
        self.calls = 0
        self.fresh, self.micro, self.first_row = True, 0, 0

    def next(self) -> Batch:
        position = self.calls % self.period
        self.calls += 1
        self.micro, self.fresh = position % self.accumulation, position < self.accumulation
        if not self.fresh:
            return (torch.empty(0, dtype=torch.long, device=self.device),)
        inner = self.inner
        # The global row this rank's micro-batch starts at: the same for one process with
        # accumulation as for the rank that draws that micro-batch, so sampling seeds agree.
        self.first_row = inner.rows_drawn + inner.rank * inner.batch_size
        return inner.next()

    @property
    def mid_cycle(self) -> bool:
        """The next step trains on kept rollouts (a checkpoint must hold them)."""
        return self.calls % self.period >= self.accumulation

    def batch_at(self, number: int) -> Batch:
        return self.inner.batch_at(number)

    def state_dict(self) -> dict:
        return self.inner.state_dict() | {"grpo_calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
        self.calls = int(state.get("grpo_calls", 0))


FIELDS = ("inputs", "targets", "old_logp", "ref_logp", "advantages")


def pack_rollouts(rollouts: list[Rollout], info: DistInfo) -> dict[str, torch.Tensor]:
    """Every rank's rollouts as (ranks, micro, rows, width) tensors, zero-padded, and their true
    (rows, width) in `shapes` (collective: every rank calls it). Each rank fills its own slot of
    a zero tensor and one sum over the ranks gathers them."""
    device, me = rollouts[0].inputs.device, info.data_rank
    shapes = torch.zeros(info.data_ranks, len(rollouts), 2, dtype=torch.long, device=device)
    for m, rollout in enumerate(rollouts):
        shapes[me, m] = torch.tensor(rollout.inputs.shape, device=device)
    shapes = sum_over_ranks(shapes, info)
    rows, width = (int(n) for n in shapes.flatten(0, 1).amax(dim=0).tolist())
    packed = {"shapes": shapes.cpu()}
    for field in FIELDS:
        if getattr(rollouts[0], field) is None:
            continue  # ref_logp without a KL term
        dtype = torch.long if field in ("inputs", "targets") else torch.float32
        size = (rows,) if field == "advantages" else (rows, width)
        slots = torch.zeros(info.data_ranks, len(rollouts), *size, dtype=dtype, device=device)
        for m, rollout in enumerate(rollouts):
            value = getattr(rollout, field)
            slots[(me, m, *(slice(0, n) for n in value.shape))] = value
        packed[field] = sum_over_ranks(slots, info).cpu()
    return packed


def unpack_rollouts(
    packed: dict, info: DistInfo, device: torch.device, where: str
) -> list[Rollout]:
    """This rank's rollouts from `pack_rollouts`' tensors, checked against the world."""
    counts = packed.get("shapes")
    if not isinstance(counts, torch.Tensor) or counts.dim() != 3:
        raise CheckpointError(
            f"{where} stops in the middle of a GRPO generation batch but holds no rollouts to "
            "finish it with; resume with the finetune.grpo.mu and train.batch_tokens it was "
            "saved with"
        )
    if counts.shape[0] != info.data_ranks:
        raise CheckpointError(
            f"{where} was saved in the middle of a GRPO generation batch by {counts.shape[0]} "
            f"data ranks, and this run has {info.data_ranks}; resume it on {counts.shape[0]}, or "
            "from a checkpoint at a step that is a multiple of finetune.grpo.mu"
        )
    me, rollouts = info.data_rank, []
    for m in range(counts.shape[1]):
        rows, width = counts[me, m].tolist()
        part = {}
        for field in FIELDS:
            value = packed.get(field)
            if value is None:
                part[field] = None
                continue
            value = value[me, m, :rows]
            part[field] = (value if value.dim() == 1 else value[:, :width]).to(device)
        rollouts.append(Rollout(**part))
    return rollouts
