"""Hugging Face MoE / MLA families <-> lmforge: Mixtral, DeepSeek-V2 and DeepSeek-V3.

Expert weights use transformers 5's in-memory layout, which is also ours: experts.gate_up_proj
(E, 2h, C) rows [gate; up] and experts.down_proj (E, C, h). Hub checkpoints store one tensor per
expert (Mixtral block_sparse_moe.experts.N.w1/w3/w2, DeepSeek mlp.experts.N.gate/up/down_proj);
`fuse_legacy_experts` stacks those on import.

DeepSeek rotates interleaved pairs (x0, x1), (x2, x3), ... of the RoPE part of q and k (V2 always,
V3 when rope_interleave). Permuting those weight rows to [evens; odds] makes our rotate-half RoPE
produce the same scores, so import permutes and export un-permutes.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.models.config import ModelConfig

DEEPSEEK = ("deepseek_v2", "deepseek_v3")
ZOO = ("mixtral", *DEEPSEEK)
_LEGACY_EXPERT = re.compile(
    r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight"
)
_ROLE = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate", "up_proj": "up"}


def config_from_zoo(hf: dict, model_type: str, common: dict) -> ModelConfig:
    """ModelConfig for a mixtral / deepseek_v2 / deepseek_v3 config.json (common: Llama-like fields)."""
    if model_type == "mixtral":
        if hf.get("router_jitter_noise"):
            raise ConfigError("mixtral router_jitter_noise is not supported; set it to 0")
        return ModelConfig(
            **common,
            sliding_window=hf.get("sliding_window"),
            ffn="moe",
            num_experts=hf["num_local_experts"],
            experts_per_token=hf["num_experts_per_tok"],
            moe_aux_loss_coef=hf.get("router_aux_loss_coef", 0.0)
            if hf.get("output_router_logits")
            else 0.0,
        )
    v3 = model_type == "deepseek_v3"
    groups, topk_groups = hf.get("n_group") or 1, hf.get("topk_group") or 1
    if not v3 and hf.get("topk_method", "greedy") == "greedy":
        groups = topk_groups = 1  # V2's plain greedy ignores the group settings
    common = common | dict(num_kv_heads=None, head_dim=None)
    return ModelConfig(
        **common,
        attention="mla",
        q_lora_rank=hf.get("q_lora_rank"),
        kv_lora_rank=hf["kv_lora_rank"],
        qk_nope_head_dim=hf["qk_nope_head_dim"],
        qk_rope_head_dim=hf["qk_rope_head_dim"],
        v_head_dim=hf["v_head_dim"],
        ffn="moe",
        num_experts=hf["n_routed_experts"],
        experts_per_token=hf["num_experts_per_tok"],
        moe_ffn_dim=hf["moe_intermediate_size"],
        num_shared_experts=hf.get("n_shared_experts") or 0,
        moe_scoring="sigmoid" if v3 else "softmax",
        moe_norm_topk=bool(hf.get("norm_topk_prob")) if v3 else False,  # V2 never renormalises
        moe_routed_scale=hf.get("routed_scaling_factor", 1.0),
        moe_groups=groups,
        moe_topk_groups=topk_groups,
        moe_bias_balancing=v3,
        moe_first_dense_layers=hf.get("first_k_dense_replace") or 0,
    )


def zoo_export_type(config: ModelConfig) -> str | None:
    """mixtral, deepseek_v2 or deepseek_v3; a ConfigError where the routing has no equivalent
    there (the HF model would load but route differently, so its outputs would be wrong)."""
    if config.attention == "mla":
        model_type = "deepseek_v3" if config.moe_scoring == "sigmoid" else "deepseek_v2"
        if model_type == "deepseek_v2" and config.ffn == "moe" and config.moe_norm_topk:
            raise ConfigError(
                "DeepSeek-V2 (softmax routing) never renormalises the top-k expert weights; "
                "set model.moe_norm_topk=false to export this model"
            )
        if model_type == "deepseek_v2" and config.moe_bias_balancing:
            raise ConfigError(
                "DeepSeek-V2 has no expert selection bias; export needs "
                "model.moe_bias_balancing=false (or sigmoid scoring, DeepSeek-V3)"
            )
        return model_type
    if config.ffn == "moe":
        mixtral_routing = (
            config.moe_scoring == "softmax"
            and config.moe_norm_topk
            and config.moe_routed_scale == 1.0
            and config.moe_groups == 1
            and config.num_shared_experts == 0
            and not config.moe_bias_balancing
        )
        if not mixtral_routing:
            raise ConfigError(
                "an MoE model without MLA exports as Mixtral, whose routing is softmax, top-k "
                "renormalised, no shared experts, groups, scaling or selection bias; this "
                "model's routing differs"
            )
        return "mixtral"
    return None


def hf_config_zoo(config: ModelConfig, model_type: str, llama_like: dict) -> dict:
    """HF config.json fields for `model_type`, on top of the Llama-style ones."""
    if model_type == "mixtral":
        return llama_like | dict(
            architectures=["MixtralForCausalLM"],
            sliding_window=config.sliding_window,
            num_local_experts=config.num_experts,
            num_experts_per_tok=config.experts_per_token,
            router_jitter_noise=0.0,
        )
    v3 = model_type == "deepseek_v3"
    return llama_like | dict(
        architectures=["DeepseekV3ForCausalLM" if v3 else "DeepseekV2ForCausalLM"],
        num_key_value_heads=config.num_heads,
        head_dim=config.qk_rope_head_dim,
        q_lora_rank=config.q_lora_rank,
        kv_lora_rank=config.kv_lora_rank,
        qk_nope_head_dim=config.qk_nope_head_dim,
        qk_rope_head_dim=config.qk_rope_head_dim,
        v_head_dim=config.v_head_dim,
        n_routed_experts=config.num_experts,
        num_experts_per_tok=config.experts_per_token,
        moe_intermediate_size=config.expert_dim,
        n_shared_experts=config.num_shared_experts,
        norm_topk_prob=config.moe_norm_topk,
        routed_scaling_factor=config.moe_routed_scale,
        n_group=config.moe_groups,
        topk_group=config.moe_topk_groups,
        topk_method="group_limited_greedy" if config.moe_groups > 1 else "greedy",
        first_k_dense_replace=config.moe_first_dense_layers,
        rope_interleave=False,  # V3 only; we export rotate-half weights as they are
    )


def fuse_legacy_experts(hf: dict[str, Tensor]) -> dict[str, Tensor]:
    """Stack per-expert hub tensors into gate_up_proj / down_proj; rename Mixtral's block_sparse_moe."""
    parts: dict[tuple[int, int], dict[str, Tensor]] = {}
    out = {}
    for key, tensor in hf.items():
        match = _LEGACY_EXPERT.fullmatch(key)
        if match:
            layer, expert, name = int(match[1]), int(match[2]), match[3]
            parts.setdefault((layer, expert), {})[_ROLE.get(name, "down")] = tensor
        else:
            out[key.replace(".block_sparse_moe.", ".mlp.")] = tensor
    for layer in sorted({layer for layer, _ in parts}):
        experts = [parts[key] for key in sorted(k for k in parts if k[0] == layer)]
        prefix = f"model.layers.{layer}.mlp.experts."
        out[prefix + "gate_up_proj"] = torch.stack(
            [torch.cat([e["gate"], e["up"]]) for e in experts]
        )
        out[prefix + "down_proj"] = torch.stack([e["down"] for e in experts])
    return out


def zoo_layer_rows(layer: ModelConfig, i: int, add) -> None:
    """Key mapping of one layer (the hf._layout `add` convention: ours, hf names, split sizes)."""
    ours, hf = f"layers.{i}.", f"model.layers.{i}."
    add(f"{ours}attn_norm.weight", f"{hf}input_layernorm.weight")
    add(f"{ours}ffn_norm.weight", f"{hf}post_attention_layernorm.weight")
    attn = f"{hf}self_attn."
    if layer.attention == "mla":
        if layer.q_lora_rank is None:
            add(f"{ours}attn.q.weight", f"{attn}q_proj.weight")
        else:
            add(f"{ours}attn.q_down.weight", f"{attn}q_a_proj.weight")
            add(f"{ours}attn.q_norm.weight", f"{attn}q_a_layernorm.weight")
            add(f"{ours}attn.q_up.weight", f"{attn}q_b_proj.weight")
        add(f"{ours}attn.kv_down.weight", f"{attn}kv_a_proj_with_mqa.weight")
        add(f"{ours}attn.kv_norm.weight", f"{attn}kv_a_layernorm.weight")
        add(f"{ours}attn.kv_up.weight", f"{attn}kv_b_proj.weight")
    else:
        q, kv = layer.num_heads * layer.attn_head_dim, layer.kv_heads * layer.attn_head_dim
        names = tuple(f"{attn}{x}_proj.weight" for x in "qkv")
        add(f"{ours}attn.qkv.weight", names, sizes=[q, kv, kv])
    add(f"{ours}attn.out.weight", f"{attn}o_proj.weight")
    mlp = f"{hf}mlp."
    if layer.ffn == "dense":
        gate_up = (f"{mlp}gate_proj.weight", f"{mlp}up_proj.weight")
        add(f"{ours}ffn.up.weight", gate_up, sizes=[layer.hidden_dim] * 2)
        add(f"{ours}ffn.down.weight", f"{mlp}down_proj.weight")
        return
    add(f"{ours}ffn.router.weight", f"{mlp}gate.weight")
    if layer.moe_bias_balancing:
        add(f"{ours}ffn.router.selection_bias", f"{mlp}gate.e_score_correction_bias")
    add(f"{ours}ffn.experts.up", f"{mlp}experts.gate_up_proj")
    add(f"{ours}ffn.experts.down", f"{mlp}experts.down_proj")
    if layer.num_shared_experts:
        shared = f"{mlp}shared_experts."
        gate_up = (f"{shared}gate_proj.weight", f"{shared}up_proj.weight")
        hidden = layer.expert_dim * layer.num_shared_experts
        add(f"{ours}ffn.shared.up.weight", gate_up, sizes=[hidden] * 2)
        add(f"{ours}ffn.shared.down.weight", f"{shared}down_proj.weight")


def permute_rope_rows(
    state: dict[str, Tensor], layers: list[ModelConfig], inverse: bool = False
) -> dict[str, Tensor]:
    """Reorder MLA's RoPE rows from interleaved pairs to [evens; odds] (or back, inverse=True)."""
    state = dict(state)
    for i, layer in enumerate(layers):
        if layer.attention != "mla":
            continue
        dr = layer.qk_rope_head_dim
        order = torch.cat([torch.arange(0, dr, 2), torch.arange(1, dr, 2)])
        if inverse:
            order = torch.argsort(order)
        head = layer.qk_nope_head_dim + dr
        q_key = f"layers.{i}.attn.q.weight"
        if q_key not in state:
            q_key = f"layers.{i}.attn.q_up.weight"
        q = state[q_key].view(layer.num_heads, head, -1)
        rope = q[:, layer.qk_nope_head_dim :][:, order]
        state[q_key] = torch.cat([q[:, : layer.qk_nope_head_dim], rope], dim=1).reshape(
            -1, q.shape[-1]
        )
        kv_key = f"layers.{i}.attn.kv_down.weight"
        kv = state[kv_key]
        state[kv_key] = torch.cat([kv[: layer.kv_lora_rank], kv[layer.kv_lora_rank :][order]])
    return state
