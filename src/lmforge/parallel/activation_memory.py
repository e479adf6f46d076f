"""Activation memory of one micro-batch: what the forward pass keeps for the backward pass.

Counted from what lmforge's blocks hand to autograd (models/transformer.py, attention.py, ffn.py,
moe.py), per token and layer, and checked against torch's MemTracker on small models
(tests/parallel/test_planner.py). Two widths of numbers: the residual stream stays fp32 under
autocast (the embedding output is fp32 and every add promotes), everything a matmul or attention
produces is in the compute dtype. Attention is the fused kind (flash / memory-efficient / CPU
flash): it keeps O(T) per head, never the T x T scores.

What each activation-checkpointing mode keeps (parallel/activation_checkpointing.py):
- none: everything below;
- selective: the block's input and the outputs of its matmuls and of attention;
- full: the block's input; one block's worth is rebuilt at a time during the backward pass.
"""

from __future__ import annotations

from lmforge.models.config import ModelConfig, layer_configs

RESIDUAL_BYTES = 4
"""The residual stream (block inputs, norm inputs) is fp32 whatever the compute dtype."""
LSE_BYTES = 4
"""Attention keeps one fp32 log-sum-exp per head and token."""
LOSS_BYTES_PER_LOGIT = 12
"""The loss runs in fp32 (evals/loss.py): its log-softmax (kept for backward), the gradient of
that, and the gradient of the logits are alive together at the start of the backward pass."""


def _attention(c: ModelConfig) -> tuple[int, int]:
    """(compute-dtype elements per token for `none`, the same for `selective`), norm output
    included. lse is counted separately (fp32)."""
    if c.attention == "mla":
        H, nope, rope, dv, rank = (
            c.num_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank
        )  # fmt: skip
        q = H * (nope + rope)
        q_path = q if c.q_lora_rank is None else 3 * c.q_lora_rank + q  # down, norm in/out, up
        latent = (rank + rope) + rank + rope  # kv_down output, kv_norm output, rotated rope key
        kv = H * (nope + dv)
        # rotated query rope part, the concatenated query and key, attention output
        rest = H * rope + 2 * H * (nope + rope) + H * dv
        none = c.dim + q_path + latent + kv + rest
        q_saved = q if c.q_lora_rank is None else c.q_lora_rank + q
        selective = q_saved + (rank + rope) + kv + H * dv + c.dim
        return none, selective
    q, kv = c.num_heads * c.attn_head_dim, c.kv_heads * c.attn_head_dim
    qkv = q + 2 * kv
    rotated = q + kv if c.position == "rope" else 0  # RoPE writes new q and k
    # norm output, fused qkv output, rotated q/k, attention output (laid out (B, T, H, D), so the
    # output projection's input is a view of it)
    none = c.dim + qkv + rotated + q
    selective = qkv + q + c.dim  # qkv, attention output, output projection
    return none, selective


def _dense_ffn(c: ModelConfig, hidden: int) -> tuple[int, int]:
    """(none, selective) compute-dtype elements per token of a dense FFN, its input included."""
    if c.mlp == "swiglu":  # up output (gate and up), silu(gate), their product
        return c.dim + 4 * hidden, 2 * hidden + c.dim
    return c.dim + 2 * hidden, hidden + c.dim  # up output, gelu output


def _ffn(c: ModelConfig) -> tuple[int, int, int]:
    """(none, selective) compute-dtype elements per token, and fp32 bytes (MoE's router)."""
    if c.ffn != "moe":
        return (*_dense_ffn(c, c.hidden_dim), 0)
    k, h = c.experts_per_token, c.expert_dim
    # per routed copy: gathered input, gate/up output, silu, product, down output, weighted output
    none = c.dim + k * (3 * c.dim + 4 * h)
    selective = k * (2 * h + c.dim)
    fp32 = 4 * (c.dim + 2 * c.num_experts)  # the router runs in fp32: its input, logits, scores
    if c.num_shared_experts:
        shared_none, shared_selective = _dense_ffn(c, h * c.num_shared_experts)
        none += shared_none - c.dim  # the FFN input is already counted
        selective += shared_selective
    return none, selective, fp32


def layer_bytes_per_token(c: ModelConfig, compute_bytes: int, mode: str) -> float:
    """Bytes one layer keeps per token of the micro-batch under activation checkpointing `mode`
    (the block input for `full`; the transient block rebuilt by `full` is not in here)."""
    block_input = RESIDUAL_BYTES * c.dim
    if mode == "full":
        return block_input
    attention_none, attention_selective = _attention(c)
    ffn_none, ffn_selective, ffn_fp32 = _ffn(c)
    lse = LSE_BYTES * c.num_heads
    if mode == "selective":
        return block_input + (attention_selective + ffn_selective) * compute_bytes + lse + ffn_fp32
    dropout_masks = 2 * c.dim if c.dropout > 0 else 0  # one bool per element, two dropouts
    norms = 2 * _norm_fp32_bytes(c)  # before attention and before the FFN
    return norms + (attention_none + ffn_none) * compute_bytes + lse + ffn_fp32 + dropout_masks


def _norm_fp32_bytes(c: ModelConfig) -> int:
    """A norm keeps its fp32 input; RMSNorm (composed of plain ops) also its normalized input,
    which its weight's gradient needs. Its output is the next matmul's input (compute dtype)."""
    return RESIDUAL_BYTES * c.dim * (2 if c.norm == "rmsnorm" else 1)


def _alibi_bias_bytes(c: ModelConfig, seq_len: int, compute_bytes: int) -> int:
    """ALiBi hands attention an explicit (H, T, T) bias, which it keeps for backward."""
    return c.num_heads * seq_len * seq_len * compute_bytes if c.position == "alibi" else 0


def activation_bytes(
    config: ModelConfig, micro_batch_size: int, seq_len: int, compute_bytes: int, mode: str
) -> float:
    """Peak activation bytes of one micro-batch (forward kept for backward, plus the loss)."""
    tokens = micro_batch_size * seq_len
    layers = layer_configs(config)
    kept = sum(layer_bytes_per_token(c, compute_bytes, mode) for c in layers) * tokens
    if mode != "full":
        kept += sum(_alibi_bias_bytes(c, seq_len, compute_bytes) for c in layers)
    # the final norm and its output, then the logits in the compute dtype and fp32
    head = _norm_fp32_bytes(config) + compute_bytes * config.dim
    logits = (
        LOSS_BYTES_PER_LOGIT + (compute_bytes if compute_bytes < 4 else 0)
    ) * config.vocab_size
    loss = (head + logits) * tokens
    if mode == "full":  # the backward pass rebuilds one block at a time, once the loss is done
        block = max(layer_bytes_per_token(c, compute_bytes, "none") for c in layers) * tokens
        return kept + max(loss, block)
    return kept + loss
