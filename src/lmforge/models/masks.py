"""Attention masks for one forward pass, per layer flavour (full, sliding window, ALiBi).

Plain causal layers keep SDPA's fast paths (no mask tensor). A sliding window or ALiBi needs an
explicit mask over slots: queries sit at slots [start, start + T), keys at [0, start + T). Slot
distances equal position distances within a row (left padding only shifts a row), so windows and
ALiBi distances computed on slots are exact for padded rows too.
"""

from __future__ import annotations

import torch

from lmforge.models.positions import alibi_slopes


class AttentionMasks:
    """Builds (attn_mask, is_causal) for SDPA, once per distinct (window, ALiBi) per forward."""

    def __init__(
        self,
        num_new: int,
        start: int,
        device: torch.device,
        valid: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        base: tuple[torch.Tensor | None, bool] = (None, True),
    ):
        self.num_new, self.start, self.device = num_new, start, device
        self.valid = valid  # (B, >= S) False at padding slots, or None
        self.document_ids = document_ids  # (B, T), training only
        self.base = base  # the plain causal mask (possibly a fast path)
        self._built: dict = {}

    def get(
        self, window: int | None = None, alibi_heads: int | None = None
    ) -> tuple[torch.Tensor | None, bool]:
        """The mask for a layer with this sliding window and (for ALiBi) this many heads."""
        if window is None and alibi_heads is None:
            return self.base
        if (window, alibi_heads) not in self._built:
            self._built[window, alibi_heads] = (self._explicit(window, alibi_heads), False)
        return self._built[window, alibi_heads]

    def _explicit(self, window: int | None, alibi_heads: int | None) -> torch.Tensor:
        end = self.start + self.num_new
        query = torch.arange(self.start, end, device=self.device)[:, None]  # (T, 1)
        key = torch.arange(end, device=self.device)[None, :]  # (1, S)
        allowed = (key <= query)[None]  # (1, T, S)
        if window is not None:
            allowed = allowed & (key > query - window)
        if self.valid is not None:
            allowed = allowed & self.valid[:, None, :end]
        if self.document_ids is not None:
            ids = self.document_ids
            allowed = allowed & (ids[:, :, None] == ids[:, None, :])
        # A padding query would see no key at all (SDPA returns NaN); let it see itself.
        allowed = (allowed | (key == query)).unsqueeze(1)  # (B|1, 1, T, S)
        if alibi_heads is None:
            return allowed
        distance = (query - key).clamp(min=0).float()  # (T, S)
        bias = -alibi_slopes(alibi_heads).to(self.device)[:, None, None] * distance  # (H, T, S)
        return bias[None].masked_fill(~allowed, float("-inf"))  # (B|1, H, T, S)
