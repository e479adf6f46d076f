"""OpenAI's presence and frequency penalties and logit_bias, applied to one row's next-token
logits before the engine picks a token (greedy or sampled).

OpenAI's definition: logits[t] -= presence_penalty * (count[t] > 0) + frequency_penalty * count[t],
with count[t] how often token t was generated so far in this row (the prompt does not count),
then logits[t] += logit_bias[t]. The engine reports the model's own logprobs, not these adjusted
ones (vLLM's default, "raw" logprobs), so scores stay comparable across settings.
"""

from __future__ import annotations

from typing import Protocol

import torch


class LogitRules(Protocol):
    """What the rules read from a row (serve.engine.Row has these fields)."""

    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[int, float] | None


def needs_adjusting(row: LogitRules) -> bool:
    """False when no rule is set: the engine then skips `adjust_logits` entirely."""
    return bool(row.presence_penalty or row.frequency_penalty or row.logit_bias)


def adjust_logits(logits: torch.Tensor, row: LogitRules, generated: list[int]) -> torch.Tensor:
    """The row's logits (vocab,) with the penalties and the bias applied; a new tensor, so the
    caller's logits (and the logprobs computed from them) stay the model's."""
    if not needs_adjusting(row):
        return logits
    adjusted = logits.float().clone()
    if generated and (row.presence_penalty or row.frequency_penalty):
        ids = torch.tensor(generated, device=logits.device)
        counts = torch.bincount(ids, minlength=adjusted.shape[-1])[: adjusted.shape[-1]].float()
        adjusted -= row.frequency_penalty * counts + row.presence_penalty * (counts > 0).float()
    if row.logit_bias:
        ids = torch.tensor(list(row.logit_bias), device=logits.device)
        adjusted[ids] += torch.tensor(list(row.logit_bias.values()), device=logits.device)
    return adjusted
