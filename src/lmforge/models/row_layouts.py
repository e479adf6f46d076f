"""Row orders of the fused projections under tensor parallelism.

lmforge fuses q/k/v into one `attn.qkv` (rows [q; k; v]) and SwiGLU's gate/up into one `ffn.up`
(rows [gate; up]). Tensor parallelism splits a column-parallel weight into contiguous row
blocks, one per rank, and a contiguous block of [q; k; v] is not one rank's heads. So under
tensor parallelism the in-memory rows are reordered:

- qkv, grouped by KV head: for each KV head g, [its query heads; k_g; v_g]. A contiguous block
  of whole groups is exactly one rank's query heads with the KV heads they attend to, for any
  degree that divides the KV heads.
- gate/up, interleaved row by row: gate_0, up_0, gate_1, up_1, ... Any even block pairs each
  gate row with its up row.

Both orders depend only on the model's shape, not on the degree, so a checkpoint's sharded state
written at one degree loads at another. Files (model.safetensors, HF, GGUF) always hold the
plain order; `permuted[i] = plain[rows[i]]` converts at the boundary (parallel/materialize.py).
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.attention import Attention
from lmforge.models.ffn import FeedForward
from lmforge.models.lora import LoRALinear


def grouped_qkv_rows(num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    per_group = num_heads // num_kv_heads
    head = torch.arange(head_dim)
    k_start, v_start = num_heads * head_dim, (num_heads + num_kv_heads) * head_dim
    rows = []
    for g in range(num_kv_heads):
        for i in range(per_group):
            rows.append((g * per_group + i) * head_dim + head)
        rows.append(k_start + g * head_dim + head)
        rows.append(v_start + g * head_dim + head)
    return torch.cat(rows)


def interleaved_gate_up_rows(hidden: int) -> torch.Tensor:
    return torch.stack([torch.arange(hidden), hidden + torch.arange(hidden)], dim=1).flatten()


def tensor_parallel_rows(model: nn.Module) -> dict[str, torch.Tensor]:
    """{state-dict name: row order} of every tensor whose rows a tensor-parallel layout reorders
    (weights, biases and LoRA's B of the fused projections); MoE layers stay whole per rank."""
    rows = {}
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            order = grouped_qkv_rows(module.num_heads, module.num_kv_heads, module.head_dim)
            rows.update(_linear_rows(f"{name}.qkv", module.qkv, order))
        elif isinstance(module, FeedForward) and module.swiglu and ".shared" not in name:
            order = interleaved_gate_up_rows(module.down.in_features)
            rows.update(_linear_rows(f"{name}.up", module.up, order))
    return rows


def _linear_rows(name: str, linear: nn.Linear, order: torch.Tensor) -> dict[str, torch.Tensor]:
    rows = {f"{name}.weight": order}
    if linear.bias is not None:
        rows[f"{name}.bias"] = order
    if isinstance(linear, LoRALinear):
        rows[f"{name}.lora_b"] = order
    return rows


def use_tensor_parallel_rows(model: nn.Module) -> None:
    """Tell the fused modules that their rows are in the tensor-parallel order."""
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            module.grouped_rows = True
        elif isinstance(module, FeedForward) and ".shared" not in name:
            module.interleaved_rows = True


def current_rows(model: nn.Module) -> dict[str, torch.Tensor]:
    """The reordered rows of `model` as it is now: {} unless tensor parallelism regrouped them."""
    uses = any(
        getattr(m, "grouped_rows", False) or getattr(m, "interleaved_rows", False)
        for m in model.modules()
    )
    return tensor_parallel_rows(model) if uses else {}


def plain_rows(name: str, tensor: torch.Tensor, rows: dict[str, torch.Tensor]) -> torch.Tensor:
    """A full tensor back in the files' row order (undo `rows[name]`, if it has one)."""
    if name not in rows:
        return tensor
    plain = torch.empty_like(tensor)
    plain[rows[name]] = tensor
    return plain
