"""Text generation: batched prompts, KV cache, temperature / top-k / top-p, rolling context."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmforge.inference.options import SamplingConfig  # defined torch-free; importable here too
from lmforge.models.kv_cache import KVCache
from lmforge.models.static_kv_cache import StaticKVCache, static_cache_supported
from lmforge.models.transformer import Transformer

CACHE_ROUNDING = 256
"""KV cache lengths are multiples of this (or the context length)."""


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf; (B, vocab)."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top one always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_tokens(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row from the last-position logits (B, vocab)."""
    if config.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / config.temperature, config.top_k, config.top_p)
    return draw(logits.softmax(dim=-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row (B,) drawn from probs (B, vocab) by inverting the cumulative sum.

    Same distribution as torch.multinomial(probs, 1), which on a CPU took 24 ms for one row of
    SmolLM2's 49k vocabulary (it draws as if without replacement); this takes 0.2 ms. Searching
    with right=True never lands on a zero-probability token (u may be 0, never 1)."""
    cumulative = probs.float().cumsum(dim=-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device)
    chosen = torch.searchsorted(cumulative, u * cumulative[:, -1:], right=True)
    return chosen.clamp(max=probs.shape[-1] - 1).squeeze(-1)


def cache_dtype(model: Transformer, device: torch.device) -> torch.dtype:
    """The keys' dtype: autocast's where it is on (GRPO samples under the training precision),
    else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return model.token_embedding.weight.dtype


def _distinct_rows(
    rows: list[list[int]], device: torch.device
) -> tuple[list[list[int]], torch.Tensor]:
    """The distinct rows in first-seen order, and for each row the index of its distinct row."""
    first: dict[tuple[int, ...], int] = {}
    index = [first.setdefault(tuple(row), len(first)) for row in rows]
    distinct = [list(key) for key in first]
    return distinct, torch.tensor(index, dtype=torch.long, device=device)


def _left_pad(rows: list[list[int]], device: torch.device):
    """Tokens (B, T) padded on the left with 0, pad counts (B,), positions (B, T)."""
    width = max(len(r) for r in rows)
    pads = torch.tensor([width - len(r) for r in rows], device=device)
    tokens = torch.tensor([[0] * (width - len(r)) + r for r in rows], device=device)
    positions = (torch.arange(width, device=device)[None, :] - pads[:, None]).clamp(min=0)
    return tokens, pads, positions


def _decode_step(model: Transformer):
    def step(tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return model(tokens, cache=cache, positions=positions)[:, -1]

    return step


def compiled_decode_step(model: Transformer):
    """The one-token forward pass, compiled once per model (fixed shapes thanks to StaticKVCache).

    Compiling fuses the dozens of small per-layer ops (norms, RoPE, residual adds) that otherwise
    cost more Python and memory traffic per token than a small model's matmuls.
    """
    compiled = getattr(model, "_compiled_decode_step", None)
    if compiled is None:
        compiled = torch.compile(_decode_step(model), fullgraph=True, dynamic=False)
        model._compiled_decode_step = compiled  # a plain attribute: not a submodule or state
    return compiled


@torch.no_grad()
def generate(
    model: Transformer,
    prompts: list[list[int]],
    config: SamplingConfig,
    on_tokens: Callable[[torch.Tensor], None] | None = None,
    compile: bool = False,
    stop_check: Callable[[int, list[int]], bool] | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to max_new_tokens; returns only the new tokens of each row.

    All rows decode in lockstep with one preallocated KV cache (a StaticKVCache where the model
    allows it). When a row reaches the context length, the cache is rebuilt from the most recent
    half-context of every row (rolling context), so generation can run past the context length.
    `on_tokens` receives each new (B,) token tensor. `compile` runs the one-token step through
    torch.compile where the StaticKVCache serves the model (the first call pays the compilation,
    later calls with the same batch size and cache length reuse it). `stop_check(row, new_ids)`
    is asked after each token a row keeps; True ends that row (e.g. a stop string was produced).
    """
    assert prompts and all(prompts), "every prompt needs at least one token"
    device = next(model.parameters()).device
    context = model.config.context_length
    window = max(context // 2, 1)
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    dtype = cache_dtype(model, device)
    static = static_cache_supported(model.config)
    cache_type = StaticKVCache if static else KVCache
    step = compiled_decode_step(model) if compile and static else _decode_step(model)

    history = [list(p[-context:]) for p in prompts]  # real tokens per row, for rebuilding
    # Allocate only what this call can fill (a full 8k-token cache of a 135M model is ~0.4 GB),
    # rounded up so that calls of similar length share one compiled step; the context rolls only
    # when the sequence really reaches the context length.
    needed = max(len(h) for h in history) + config.max_new_tokens
    cache_len = min(context, -(-needed // CACHE_ROUNDING) * CACHE_ROUNDING)
    new_tokens: list[list[int]] = [[] for _ in prompts]
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    stops = torch.tensor(config.stop_tokens, dtype=torch.long, device=device)

    def prefill(rows: list[list[int]]):
        # Equal rows (a GRPO group: completions of one prompt) are prefilled once
        # and their cache rows copied; only the last position's logits are projected.
        distinct, index = _distinct_rows(rows, device)
        tokens, pads, positions = _left_pad(distinct, device)
        cache = cache_type(model.config, len(distinct), cache_len, device, dtype)
        cache.set_padding(pads)
        logits = model(tokens, cache=cache, positions=positions, last_only=True)[:, -1]
        next_position = positions[:, -1:] + 1
        if len(distinct) < len(rows):
            cache.select_rows(index)
            logits, next_position = logits[index], next_position[index]
        return cache, logits, next_position

    cache, logits, next_position = prefill(history)
    for _ in range(config.max_new_tokens):
        token = next_tokens(logits, config, generator)
        already_done = finished.tolist()
        if config.stop_tokens:
            finished |= torch.isin(token, stops)
        if on_tokens is not None:
            on_tokens(token)
        for row, value in enumerate(token.tolist()):
            history[row].append(value)
            if not already_done[row]:
                new_tokens[row].append(value)
                if stop_check is not None and stop_check(row, new_tokens[row]):
                    finished[row] = True
        if bool(finished.all()):
            break
        if cache.length == cache.max_len:
            cache, logits, next_position = prefill([h[-window:] for h in history])
            continue
        logits = step(token[:, None], next_position, cache)
        next_position = next_position + 1
    return new_tokens
