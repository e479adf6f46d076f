"""Parameter counts and model FLOPs per token (for MFU)."""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.config import ModelConfig


def build_on_meta(config: ModelConfig) -> nn.Module:
    """The model with shapes but no storage: counts a 70B config in milliseconds."""
    from lmforge.models.transformer import Transformer

    with torch.device("meta"):
        return Transformer(config)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding/head pair counts once)."""
    return sum(p.numel() for p in model.parameters())


def matmul_parameters(model: nn.Module) -> int:
    """Parameters that take part in a matmul per token: all but lookup tables.

    An untied token embedding and a learned position table are only indexed, so they cost no
    FLOPs; a tied embedding still counts once, as the LM head.
    """
    config = model.config
    total = count_parameters(model)
    if not config.tie_embeddings:
        total -= model.token_embedding.weight.numel()
    if config.position == "learned":
        total -= model.position_embedding.weight.numel()
    return total


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token, PaLM appendix B: 6N + 12 * layers * heads * head_dim * seq_len.

    6N covers forward (2N) and backward (4N) matmuls; the second term is attention scores and
    weighted values, which do not depend on parameters.
    """
    config: ModelConfig = model.config
    attention = 12 * config.num_layers * config.num_heads * config.attn_head_dim * seq_len
    return 6 * matmul_parameters(model) + attention
