"""A row (one prompt to continue, with its own settings), its state while the engine runs it, and
how one token is picked and scored for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmforge.inference.generate import draw, filter_logits
from lmforge.serve.logit_rules import adjust_logits, needs_adjusting
from lmforge.serve.text_stream import TextStream
from lmforge.tokenizer import Tokenizer


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float | None  # None for a prompt's first token (nothing before it to predict it)
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Row:
    """One prompt to continue, with its own settings; results go to `emit` as events:
    ("text", index, text, [TokenLogprob]), ("done", index, finish_reason, completion_tokens,
    prompt_logprobs or None, cached_prompt_tokens), ("error", index, message, http_status)."""

    index: int
    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[tuple], None]
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None
    """Top alternatives per token; None: no logprobs at all."""
    echo_logprobs: bool = False
    """Also score the prompt tokens (for `echo` with `logprobs`)."""
    cancelled: bool = False
    # OpenAI's penalties and logit_bias (token id -> bias): see serve/logit_rules.py.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    arrived: float = field(default_factory=time.monotonic)
    deadline: float | None = None
    """time.monotonic() after which the row is stopped with a timeout error."""


class Sequence:
    """A row inside the engine: where its keys/values are, what it has produced so far."""

    def __init__(self, row: Row, tokenizer: Tokenizer, device: torch.device):
        self.row = row
        self.text = TextStream(tokenizer, row.stop)
        self.generated: list[int] = []
        self.generator = None
        if row.temperature > 0 and row.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(row.seed)
        self.prefilled = 0  # prompt tokens whose keys/values are in the slot
        self.cached = 0  # of those, how many came from the prefix cache
        self.prompt_scores: list[TokenLogprob] | None = None
        self.last_token_time: float | None = None
        self.slot = -1  # where its keys/values are (the engine moves it)
        self.pending = -1  # the token sampled last, to feed at the next decode step

    def tokens_in_cache(self, length: int) -> list[int]:
        """The token ids whose keys/values fill the slot's first `length` positions."""
        return (self.row.prompt_ids + self.generated)[:length]


def top_logprobs(logprobs: torch.Tensor, count: int) -> list[tuple[int, float]]:
    if count <= 0:
        return []
    values, ids = torch.topk(logprobs, min(count, logprobs.shape[-1]))
    return list(zip(ids.tolist(), values.tolist(), strict=True))


def score_prompt_chunk(
    logits: torch.Tensor, ids: list[int], start: int, count: int
) -> list[TokenLogprob]:
    """Logprobs of the prompt tokens that the chunk's logits (T, vocab), for positions
    [start, start + T), predict: tokens start + 1 ... (the first chunk also gets the prompt's
    first token, which nothing predicts)."""
    out = [TokenLogprob(ids[0], None)] if start == 0 else []
    logprobs = logits.float().log_softmax(dim=-1)
    for offset in range(logits.shape[0]):
        position = start + offset + 1
        if position < len(ids):
            scores = logprobs[offset]
            token = ids[position]
            out.append(TokenLogprob(token, float(scores[token]), top_logprobs(scores, count)))
    return out


def pick_tokens(logits: torch.Tensor, rows: list[Sequence]) -> torch.Tensor:
    """One token per row (B,): argmax for greedy rows, each sampled row with its settings."""
    chosen = logits.argmax(dim=-1)
    for i, state in enumerate(rows):
        row = state.row
        adjust = needs_adjusting(row)
        if row.temperature <= 0 and not adjust:
            continue
        row_logits = logits[i].float()
        if adjust:  # a copy: the logprobs reported stay the model's own
            row_logits = adjust_logits(row_logits, row, state.generated)
        if row.temperature <= 0:
            chosen[i] = row_logits.argmax()
            continue
        scaled = filter_logits(row_logits[None] / row.temperature, row.top_k, row.top_p)
        chosen[i] = draw(scaled.softmax(dim=-1), state.generator)[0]
    return chosen
