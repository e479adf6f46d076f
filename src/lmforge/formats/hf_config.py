"""Hugging Face transformers <-> lmforge model configs (plain config.json dicts); the weights'
mapping is hf_weights.py.

Pure functions over dicts; nothing here imports transformers, so reading or writing an HF
checkpoint directory does not need it installed.

Import: gpt2, llama (2/3/3.1), mistral (with sliding window), qwen2 (Llama + q/k/v biases), and
through hf_zoo.py mixtral, deepseek_v2 and deepseek_v3 (MLA + MoE).
Export: GPT-2 for gelu/layernorm/learned/bias configs, Llama (Qwen2 when qkv_bias, Mistral with a
sliding window) for swiglu/rmsnorm/rope ones, Mixtral for MoE, DeepSeek-V2/V3 for MLA.
"""

from __future__ import annotations

from lmforge.errors import ConfigError
from lmforge.formats.hf_zoo import (
    ZOO,
    config_from_zoo,
    hf_config_zoo,
    zoo_export_type,
)
from lmforge.models.config import ModelConfig, layer_configs, layer_shapes
from lmforge.models.ranges import check_model_file, check_source_numbers

LLAMA_LIKE = ("llama", "mistral", "qwen2")
SUPPORTED = ("gpt2", *LLAMA_LIKE, *ZOO)


# HF config.json numbers -> the ModelConfig fields they become (dotted: inside a table). They meet
# the model range table before any arithmetic on them: a zero head count would divide by zero.
_ROPE = {
    "factor": "rope_scaling_factor",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_original_context_length",
    "beta_fast": "rope_yarn_beta_fast",
    "beta_slow": "rope_yarn_beta_slow",
    "mscale": "rope_yarn_mscale",
    "mscale_all_dim": "rope_yarn_mscale_all_dim",
    "rope_theta": "rope_theta",
}
_NAMES = {
    "vocab_size": "vocab_size",
    "initializer_range": "init_std",
    # gpt2
    "n_positions": "context_length",
    "n_ctx": "context_length",
    "n_embd": "dim",
    "n_layer": "num_layers",
    "n_head": "num_heads",
    "n_inner": "ffn_dim",
    "layer_norm_epsilon": "norm_eps",
    # llama, mistral, qwen2, and the zoo's (hf_zoo.py) on top
    "max_position_embeddings": "context_length",
    "hidden_size": "dim",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "intermediate_size": "ffn_dim",
    "rms_norm_eps": "norm_eps",
    "rope_theta": "rope_theta",
    "sliding_window": "sliding_window",
    "num_local_experts": "num_experts",
    "n_routed_experts": "num_experts",
    "num_experts_per_tok": "experts_per_token",
    "moe_intermediate_size": "moe_ffn_dim",
    "n_shared_experts": "num_shared_experts",
    "routed_scaling_factor": "moe_routed_scale",
    "n_group": "moe_groups",
    "topk_group": "moe_topk_groups",
    "first_k_dense_replace": "moe_first_dense_layers",
    "router_aux_loss_coef": "moe_aux_loss_coef",
    "q_lora_rank": "q_lora_rank",
    "kv_lora_rank": "kv_lora_rank",
    "qk_nope_head_dim": "qk_nope_head_dim",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim",
}
HF_NUMBERS = _NAMES | {
    f"{table}.{key}": ours
    for table in ("rope_scaling", "rope_parameters")
    for key, ours in _ROPE.items()
}


def model_config_from_hf(hf_config: dict, source: str = "HF config.json") -> ModelConfig:
    """Our ModelConfig for an HF config.json dict (or `PretrainedConfig.to_dict()`); `source`
    (the file) names it in errors. Checked like any model read from a file (ranges, shapes)."""
    model_type = hf_config.get("model_type")
    check_source_numbers(hf_config, HF_NUMBERS, source)
    try:
        if model_type == "gpt2":
            config = _config_from_gpt2(hf_config)
        elif model_type in LLAMA_LIKE or model_type in ZOO:
            config = _config_from_llama(hf_config, model_type)
        else:
            supported = ", ".join(SUPPORTED)
            raise ConfigError(f"cannot import HF model_type '{model_type}'; supported: {supported}")
    except KeyError as missing:
        raise ConfigError(
            f"HF {model_type} config has no '{missing.args[0]}'; pass the model's full config.json"
        ) from None
    except TypeError:  # a null where a number is needed (its arithmetic, e.g. dim // heads)
        raise ConfigError(
            f"{source}: a size this {model_type} model needs is null; pass the model's full "
            "config.json"
        ) from None
    check_model_file(config, source)
    return config


def _config_from_gpt2(hf: dict) -> ModelConfig:
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(
            f"GPT-2 activation_function '{activation}' is not supported; lmforge's GELU is the "
            "tanh approximation (gelu_new)"
        )
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise ConfigError(
            "GPT-2 attention scaling variants (scale_attn_by_inverse_layer_idx, "
            "scale_attn_weights=false) are not supported; only the standard 1/sqrt(head_dim)"
        )
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        context_length=hf.get("n_positions") or hf["n_ctx"],
        dim=hf["n_embd"],
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        ffn_dim=hf.get("n_inner") or 4 * hf["n_embd"],
        mlp="gelu",
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        position="learned",
        bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        init_std=hf.get("initializer_range", 0.02),
    )


def _config_from_llama(hf: dict, model_type: str) -> ModelConfig:
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{model_type} hidden_act '{hf['hidden_act']}' unsupported; only silu")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ConfigError(
            f"{model_type} attention_bias/mlp_bias are not supported (lmforge has biases on q/k/v "
            "only, as in Qwen2); use a checkpoint without output/MLP biases"
        )
    context = hf.get("max_position_embeddings", 2048)
    # Qwen2 carries a sliding_window value that is only used when use_sliding_window is true.
    window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
    if model_type == "qwen2" and window is not None and window < context:
        raise ConfigError(
            f"qwen2 sliding_window={window} is smaller than max_position_embeddings={context} and "
            "lmforge does not implement Qwen2's per-layer windows (max_window_layers); set "
            f"max_position_embeddings to {window} in config.json (full attention is then exact)"
        )
    # transformers 5 keeps theta and scaling in `rope_parameters`; 4.x has rope_theta + rope_scaling.
    rope = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3", "yarn"):
        raise ConfigError(
            f"{model_type} rope_type '{rope_type}' is not supported; lmforge implements default, "
            "llama3 and yarn RoPE scaling"
        )
    scaling = {}
    if rope_type == "yarn":
        if rope.get("attention_factor") is not None:
            raise ConfigError(f"{model_type} yarn attention_factor is not supported; remove it")
        original = rope["original_max_position_embeddings"]
        scaling = dict(
            rope_scaling="yarn",
            rope_scaling_factor=rope.get("factor") or context / original,
            rope_original_context_length=original,
            rope_yarn_beta_fast=float(rope.get("beta_fast") or 32),
            rope_yarn_beta_slow=float(rope.get("beta_slow") or 1),
            rope_yarn_mscale=float(rope.get("mscale") or 0),
            rope_yarn_mscale_all_dim=float(rope.get("mscale_all_dim") or 0),
        )
    if rope_type == "llama3":
        scaling = dict(
            rope_scaling="llama3",
            rope_scaling_factor=rope["factor"],
            rope_low_freq_factor=rope["low_freq_factor"],
            rope_high_freq_factor=rope["high_freq_factor"],
            rope_original_context_length=rope["original_max_position_embeddings"],
        )
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or dim // heads
    common = dict(
        vocab_size=hf["vocab_size"],
        context_length=context,
        dim=dim,
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=None if head_dim * heads == dim else head_dim,
        ffn_dim=hf["intermediate_size"],
        mlp="swiglu",
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        position="rope",
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        qkv_bias=model_type == "qwen2",  # Qwen2 always has q/k/v biases (and no others)
        tie_embeddings=hf.get("tie_word_embeddings", False),
        init_std=hf.get("initializer_range", 0.02),
        **scaling,
    )
    if model_type in ZOO:
        return config_from_zoo(hf, model_type, common)
    return ModelConfig(**common, sliding_window=window if model_type == "mistral" else None)


def export_type(config: ModelConfig) -> str:
    """The HF model_type whose architecture is exactly this config's."""
    flavour = (config.mlp, config.norm, config.position, config.bias)
    zoo = zoo_export_type(config)
    if zoo or config.sliding_window or config.layers:
        if flavour != ("swiglu", "rmsnorm", "rope", False) or config.qkv_bias:
            raise ConfigError(
                "MoE / MLA / sliding-window export needs swiglu/rmsnorm/rope, no bias"
            )
        return zoo or "mistral"
    if flavour == ("gelu", "layernorm", "learned", True):
        # GPT-2 has no head_dim or kv-head settings: plain multi-head attention only.
        if config.kv_heads == config.num_heads == config.dim / config.attn_head_dim:
            return "gpt2"
        raise ConfigError(
            f"GPT-2 export needs plain MHA, multi-head attention (num_kv_heads = num_heads and "
            f"head_dim = dim / num_heads), but this model has {config.num_heads} heads, "
            f"{config.kv_heads} kv heads and head_dim {config.attn_head_dim} at dim {config.dim}"
        )
    if flavour == ("swiglu", "rmsnorm", "rope", False):
        if config.dim % config.num_heads == 0:
            return "qwen2" if config.qkv_bias else "llama"
        # transformers' Llama and Qwen2 configs refuse a hidden size that is not a multiple of
        # the head count even with an explicit head_dim; Mistral (Llama without a sliding
        # window) takes head_dim as given, so such a model exports as Mistral.
        if not config.qkv_bias:
            return "mistral"
        raise ConfigError(
            f"model.dim={config.dim} is not a multiple of num_heads={config.num_heads}, which "
            "transformers' Qwen2 (q/k/v biases) refuses; export needs num_heads dividing dim"
        )
    raise ConfigError(
        f"no HF architecture matches mlp={config.mlp}, norm={config.norm}, "
        f"position={config.position}, bias={config.bias}; export supports Llama "
        "(swiglu/rmsnorm/rope, no bias) and GPT-2 (gelu/layernorm/learned/bias, plain MHA)"
    )


def hf_config_from_model_config(config: ModelConfig) -> dict:
    """An HF config.json dict (GPT2LMHeadModel, LlamaForCausalLM or Qwen2ForCausalLM)."""
    if config.vocab_size is None:
        raise ConfigError("model.vocab_size is unset; resolve it from the tokenizer before export")
    model_type = export_type(config)
    common = dict(
        model_type=model_type,
        vocab_size=config.vocab_size,
        tie_word_embeddings=config.tie_embeddings,
        initializer_range=config.init_std,
    )
    if model_type == "gpt2":
        return common | dict(
            architectures=["GPT2LMHeadModel"],
            n_positions=config.context_length,
            n_embd=config.dim,
            n_layer=config.num_layers,
            n_head=config.num_heads,
            n_inner=config.hidden_dim,
            activation_function="gelu_new",
            layer_norm_epsilon=config.norm_eps,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
        )
    rope_scaling, theta = None, config.rope_theta
    if config.rope_scaling == "yarn":
        rope_scaling = dict(
            rope_type="yarn",
            factor=config.rope_scaling_factor,
            original_max_position_embeddings=config.rope_original_context_length,
            beta_fast=config.rope_yarn_beta_fast,
            beta_slow=config.rope_yarn_beta_slow,
            mscale=config.rope_yarn_mscale,
            mscale_all_dim=config.rope_yarn_mscale_all_dim,
        )
    if config.rope_scaling == "llama3":
        rope_scaling = dict(
            rope_type="llama3",
            factor=config.rope_scaling_factor,
            low_freq_factor=config.rope_low_freq_factor,
            high_freq_factor=config.rope_high_freq_factor,
            original_max_position_embeddings=config.rope_original_context_length,
        )
    names = {"qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
    hf = common | dict(
        architectures=[names.get(model_type, "LlamaForCausalLM")],
        hidden_size=config.dim,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.kv_heads,
        head_dim=config.attn_head_dim,
        max_position_embeddings=config.context_length,
        hidden_act="silu",
        rms_norm_eps=config.norm_eps,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=config.dropout,
        # Both spellings: transformers 4.x reads rope_theta/rope_scaling, 5.x rope_parameters.
        rope_theta=theta,
        rope_scaling=rope_scaling,
        rope_parameters={"rope_type": "default", **(rope_scaling or {}), "rope_theta": theta},
    )
    if model_type == "mistral":
        hf["sliding_window"] = config.sliding_window
    elif model_type in ZOO:
        hf = hf_config_zoo(config, model_type, hf)
    back = model_config_from_hf(hf)  # a heterogeneous stack must be what the HF config builds
    if layer_shapes(back) != layer_shapes(config) or [
        c.sliding_window for c in layer_configs(back)
    ] != [c.sliding_window for c in layer_configs(config)]:
        raise ConfigError(
            f"these per-layer settings (model.layers) have no {model_type} equivalent; HF export "
            "needs uniform layers (DeepSeek: dense first moe_first_dense_layers, then MoE)"
        )
    return hf
