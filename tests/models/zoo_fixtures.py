"""Helpers shared by the architecture-zoo tests (imported explicitly; not a conftest)."""

from __future__ import annotations

import torch

from lmforge.models.kv_cache import KVCache
from lmforge.models.transformer import Transformer


@torch.no_grad()
def cached_logits(model: Transformer, tokens: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits from a prefill of `prefill` tokens, then one cached decoding step per token."""
    B, T = tokens.shape
    cache = KVCache(model.config, B, T, tokens.device, torch.float32)
    pieces = [model(tokens[:, :prefill], cache=cache)]
    for t in range(prefill, T):
        pieces.append(model(tokens[:, t : t + 1], cache=cache))
    return torch.cat(pieces, dim=1)


@torch.no_grad()
def assert_causal(model: Transformer, vocab: int, length: int = 16, changed: int = 10) -> None:
    """Changing token `changed` leaves the logits before it unchanged (and changes it and after)."""
    tokens = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(3))
    edited = tokens.clone()
    edited[:, changed] = (edited[:, changed] + 1) % vocab
    before, after = model(tokens), model(edited)
    torch.testing.assert_close(before[:, :changed], after[:, :changed], atol=1e-6, rtol=0)
    assert (before[:, changed:] - after[:, changed:]).abs().max() > 1e-4
