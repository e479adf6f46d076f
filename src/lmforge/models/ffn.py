"""Dense feed-forward blocks: GELU MLP (GPT-2) and SwiGLU (Llama). MoE lives in moe.py."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from lmforge.models.config import ModelConfig


class FeedForward(nn.Module):
    """GELU MLP (GPT-2) or SwiGLU (Llama); SwiGLU's gate and up projections are fused."""

    def __init__(self, config: ModelConfig, hidden: int | None = None):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        hidden = hidden or config.hidden_dim
        self.up = nn.Linear(config.dim, 2 * hidden if self.swiglu else hidden, bias=config.bias)
        self.down = nn.Linear(hidden, config.dim, bias=config.bias)
        self.interleaved_rows = False  # tensor parallelism interleaves gate and up rows

    def forward(self, x):
        h = self.up(x)
        if self.swiglu and self.interleaved_rows:  # rows gate_0, up_0, gate_1, up_1, ...
            h = h.unflatten(-1, (-1, 2))
            h = F.silu(h[..., 0]) * h[..., 1]
        elif self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.down(h)
