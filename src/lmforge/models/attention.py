"""Self-attention flavours: grouped-query attention (MHA/GQA/MQA) and DeepSeek's Multi-head Latent
Attention (MLA). Both take a sliding window and ALiBi through the layer's mask.

Shapes: B batch, T new tokens, S attended positions (cache + new), H query heads, KV key/value
heads, D head_dim, r kv_lora_rank, dn/dr/dv MLA's no-rope, rope and value head widths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.config import ModelConfig
from lmforge.models.kv_cache import KVCache
from lmforge.models.masks import AttentionMasks
from lmforge.models.positions import apply_rope, yarn_mscale

Rope = tuple[torch.Tensor, torch.Tensor] | None


def _layer_mask(config: ModelConfig, masks: AttentionMasks, dtype: torch.dtype):
    alibi_heads = config.num_heads if config.position == "alibi" else None
    attn_mask, is_causal = masks.get(config.sliding_window, alibi_heads)
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(dtype)  # SDPA wants a float bias in the query's dtype
    return attn_mask, is_causal


class Attention(nn.Module):
    """Causal self-attention with grouped-query heads (MHA when KV == H, MQA when KV == 1)."""

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.config = config
        self.layer_index = layer_index
        self.num_heads = config.num_heads
        self.num_kv_heads = config.kv_heads
        self.head_dim = config.attn_head_dim
        self.dropout = config.dropout
        qkv_width = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        # One fused projection: a single large matmul is faster than three small ones.
        self.qkv = nn.Linear(config.dim, qkv_width, bias=config.bias or config.qkv_bias)
        self.out = nn.Linear(self.num_heads * self.head_dim, config.dim, bias=config.bias)
        self.grouped_rows = False  # tensor parallelism regroups qkv's rows by KV head

    def forward(self, x, rope: Rope, masks: AttentionMasks, cache: KVCache | None = None):
        B, T, _ = x.shape
        q, k, v = self._split_heads(self.qkv(x), B, T)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (B, KV, S, D)
        attn_mask, is_causal = _layer_mask(self.config, masks, q.dtype)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=is_causal and attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )  # (B, H, T, D)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def _split_heads(self, qkv: torch.Tensor, B: int, T: int):
        """q (B, H, T, D), k and v (B, KV, T, D) from the fused projection. Head counts come from
        the width, so a tensor-parallel rank's share (H/tp, KV/tp heads) splits the same way."""
        D = self.head_dim
        if self.grouped_rows:  # rows [q heads of group g; k_g; v_g] per KV group (see row_layouts)
            per_group = self.num_heads // self.num_kv_heads
            qkv = qkv.view(B, T, -1, per_group + 2, D)  # (B, T, KV, per_group + 2, D)
            q = qkv[:, :, :, :per_group].reshape(B, T, -1, D).transpose(1, 2)
            return q, qkv[:, :, :, per_group].transpose(1, 2), qkv[:, :, :, -1].transpose(1, 2)
        q_width = qkv.shape[-1] * self.num_heads // (self.num_heads + 2 * self.num_kv_heads)
        kv_width = (qkv.shape[-1] - q_width) // 2
        q, k, v = qkv.split([q_width, kv_width, kv_width], dim=-1)
        q = q.view(B, T, -1, D).transpose(1, 2)  # (B, H, T, D)
        return q, k.view(B, T, -1, D).transpose(1, 2), v.view(B, T, -1, D).transpose(1, 2)


class LatentAttention(nn.Module):
    """MLA (DeepSeek-V2/V3): K and V are rebuilt per head from a small shared latent, and a single
    RoPE key is shared by all heads, so the cache holds only kv_lora_rank + qk_rope_head_dim
    numbers per token and layer.

    The absorbed path (config.mla_absorb, inference only) never materialises K and V: W_UK is folded
    into the query (q_nope @ W_UK lives in latent space) and W_UV into the output, which is what
    makes decoding from the latent cache cheap.
    """

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.config = config
        self.layer_index = layer_index
        H, dim = config.num_heads, config.dim
        self.nope, self.rope, self.vdim = (
            config.qk_nope_head_dim,
            config.qk_rope_head_dim,
            config.v_head_dim,
        )
        self.rank = config.kv_lora_rank
        q_width = H * (self.nope + self.rope)
        if config.q_lora_rank is None:
            self.q = nn.Linear(dim, q_width, bias=False)
        else:
            self.q_down = nn.Linear(dim, config.q_lora_rank, bias=config.bias)
            self.q_norm = nn.RMSNorm(config.q_lora_rank, eps=config.norm_eps)
            self.q_up = nn.Linear(config.q_lora_rank, q_width, bias=False)
        # Rows [latent; shared rope key]: one matmul for both.
        self.kv_down = nn.Linear(dim, self.rank + self.rope, bias=config.bias)
        self.kv_norm = nn.RMSNorm(self.rank, eps=config.norm_eps)
        self.kv_up = nn.Linear(
            self.rank, H * (self.nope + self.vdim), bias=False
        )  # per head [k; v]
        self.out = nn.Linear(H * self.vdim, dim, bias=config.bias)
        self.scale = (self.nope + self.rope) ** -0.5
        if config.rope_scaling == "yarn" and config.rope_yarn_mscale_all_dim:
            # DeepSeek's YaRN also sharpens the softmax (its cos/sin carry the rest of the factor).
            self.scale *= (
                yarn_mscale(config.rope_scaling_factor, config.rope_yarn_mscale_all_dim) ** 2
            )

    def forward(self, x, rope: Rope, masks: AttentionMasks, cache: KVCache | None = None):
        B, T, _ = x.shape
        q = self.q(x) if hasattr(self, "q") else self.q_up(self.q_norm(self.q_down(x)))
        H = q.shape[-1] // (self.nope + self.rope)  # all heads, or a tensor-parallel rank's share
        q = q.view(B, T, H, self.nope + self.rope).transpose(1, 2)  # (B, H, T, dn + dr)
        q_nope, q_rope = q.split([self.nope, self.rope], dim=-1)
        latent, k_rope = self.kv_down(x).split([self.rank, self.rope], dim=-1)
        latent = self.kv_norm(latent).unsqueeze(1)  # (B, 1, T, r)
        k_rope = k_rope.unsqueeze(1)  # (B, 1, T, dr)
        if rope is not None:
            q_rope, k_rope = apply_rope(q_rope, *rope), apply_rope(k_rope, *rope)
        if cache is not None:
            latent, k_rope = cache.update(self.layer_index, latent, k_rope)  # (B, 1, S, .)
        attn_mask, is_causal = _layer_mask(self.config, masks, q.dtype)
        is_causal = is_causal and attn_mask is None
        if self.config.mla_absorb and not self.training:
            y = self._absorbed(q_nope, q_rope, latent, k_rope, attn_mask, is_causal)
        else:
            S = latent.shape[2]
            kv = self.kv_up(latent.squeeze(1)).view(B, S, H, self.nope + self.vdim).transpose(1, 2)
            k_nope, v = kv.split([self.nope, self.vdim], dim=-1)  # (B, H, S, dn), (B, H, S, dv)
            k = torch.cat([k_nope, k_rope.expand(-1, H, -1, -1)], dim=-1)
            y = F.scaled_dot_product_attention(
                torch.cat([q_nope, q_rope], dim=-1),
                k,
                v,
                attn_mask=attn_mask,
                is_causal=is_causal,
                dropout_p=self.config.dropout if self.training else 0.0,
                scale=self.scale,
            )  # (B, H, T, dv)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def _absorbed(self, q_nope, q_rope, latent, k_rope, attn_mask, is_causal):
        H = self.config.num_heads
        w = self.kv_up.weight.view(H, self.nope + self.vdim, self.rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]  # (H, dn, r), (H, dv, r)
        q_latent = torch.einsum("bhtd,hdr->bhtr", q_nope, w_uk)  # scores = q_latent . latent
        y_latent = F.scaled_dot_product_attention(
            torch.cat([q_latent, q_rope], dim=-1),  # (B, H, T, r + dr)
            torch.cat([latent, k_rope], dim=-1),  # (B, 1, S, r + dr): one head shared by all
            latent,
            attn_mask=attn_mask,
            is_causal=is_causal,
            scale=self.scale,
            enable_gqa=True,
        )  # (B, H, T, r)
        return torch.einsum("bhtr,hvr->bhtv", y_latent, w_uv)  # (B, H, T, dv)
