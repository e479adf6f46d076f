"""Parameter counts and model FLOPs per token (for MFU), layer by layer.

MoE layers have two counts: total parameters (memory) and active parameters (the shared part plus
experts_per_token of the routed experts: what one token's forward multiplies by, so FLOPs).
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.config import ModelConfig
from lmforge.models.moe import moe_layers
from lmforge.models.transformer import Transformer


def build_on_meta(config: ModelConfig) -> nn.Module:
    """The model with shapes but no storage: counts a 70B config in milliseconds."""
    with torch.device("meta"):
        return Transformer(config)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding/head pair counts once)."""
    return sum(p.numel() for p in model.parameters())


def inactive_expert_parameters(model: nn.Module) -> int:
    """Routed-expert parameters a token does not use: (E - k) / E of each MoE layer's experts."""
    idle = 0
    for _, block in moe_layers(model):
        c = block.config
        per_expert = (block.experts.up.numel() + block.experts.down.numel()) // c.num_experts
        idle += (c.num_experts - c.experts_per_token) * per_expert
    return idle


def active_parameters(model: nn.Module) -> int:
    """Parameters one token's forward pass uses (equals count_parameters without MoE)."""
    return count_parameters(model) - inactive_expert_parameters(model)


def matmul_parameters(model: nn.Module) -> int:
    """Active parameters that take part in a matmul per token: all but lookup tables.

    An untied token embedding and a learned position table are only indexed, so they cost no
    FLOPs; a tied embedding still counts once, as the LM head.
    """
    config = model.config
    total = active_parameters(model)
    if not config.tie_embeddings:
        total -= model.token_embedding.weight.numel()
    if config.position == "learned":
        total -= model.position_embedding.weight.numel()
    return total


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token, PaLM appendix B: 6N + 12 * layers * heads * head_dim * seq_len.

    6N covers forward (2N) and backward (4N) matmuls of the active parameters; the second term is
    attention scores and weighted values, which do not depend on parameters. Summed per layer: MLA
    scores use qk_nope + qk_rope widths and values v_head_dim; a sliding window caps the keys seen.
    """
    attention = 0
    for layer in model.layers:
        c: ModelConfig = layer.config
        if c.attention == "mla":
            widths = c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim
        else:
            widths = 2 * c.attn_head_dim
        keys = min(seq_len, c.sliding_window or seq_len)
        attention += 6 * c.num_heads * widths * keys
    return 6 * matmul_parameters(model) + attention
