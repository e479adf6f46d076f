"""Batched log-likelihood scoring of token rows: the primitive under `LanguageModel.loglikelihood`
(multiple-choice tasks, lm-evaluation-harness) and `loglikelihood_rolling` (perplexity).

Rows are sorted by length and scored in right-padded batches: a causal model's real tokens never
attend to the pads after them, so padding changes nothing. Log-softmax runs in fp32 (fp64 sums)
on the scored positions only, not on the whole (batch, time, vocab) logits.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def score_continuations(
    model: nn.Module, rows: list[tuple[list[int], int]], batch_size: int = 16
) -> list[tuple[float, bool]]:
    """(sum of log-probabilities, all-greedy) of the last `n` tokens of each (ids, n) row.

    A row longer than the model's context loses tokens on the left; its scored part is kept as
    far as the context allows (at least one token has to be there to predict from).
    """
    limit = model.config.context_length + 1  # a window of `context` inputs predicts one more
    clipped = []
    for ids, count in rows:
        if count < 1 or len(ids) <= count - 1 or len(ids) < 2:
            raise ValueError("each row needs a token before its scored continuation")
        ids = ids[-limit:]
        clipped.append((ids, min(count, len(ids) - 1)))
    order = sorted(range(len(clipped)), key=lambda i: -len(clipped[i][0]))
    device = next(model.parameters()).device
    results: list[tuple[float, bool]] = [(0.0, False)] * len(clipped)
    for first in range(0, len(order), batch_size):
        batch = [clipped[i] for i in order[first : first + batch_size]]
        width = max(len(ids) for ids, _ in batch) - 1  # inputs exclude each row's last token
        tokens = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (ids, _) in enumerate(batch):
            tokens[row, : len(ids) - 1] = torch.tensor(ids[:-1])
        logits = model(tokens.to(device))
        for row, (ids, count) in enumerate(batch):
            end = len(ids) - 1  # logits[t] predicts ids[t + 1]
            scored = logits[row, end - count : end].float().log_softmax(dim=-1)
            targets = torch.tensor(ids[-count:], device=device)
            logprob = scored.gather(1, targets[:, None]).double().sum().item()
            greedy = bool((scored.argmax(dim=-1) == targets).all())
            results[order[first + row]] = (logprob, greedy)
    return results


def rolling_windows(tokens: list[int], context: int) -> list[tuple[list[int], int]]:
    """(ids, n) rows that score every token of `tokens` after the first exactly once.

    Windows of up to context + 1 tokens; the first predicts tokens 1..context, each later one
    predicts the next `context` tokens with as much preceding text as fits (as lm-eval's
    rolling windows do), so no token is predicted twice and none from an empty context.
    """
    windows = []
    start = 1  # first token not yet scored
    while start < len(tokens):
        end = min(start + context, len(tokens))
        first_input = max(0, end - context - 1)
        windows.append((tokens[first_input:end], end - start))
        start = end
    return windows
