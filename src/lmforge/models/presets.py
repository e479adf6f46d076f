"""Named model configs. Published shapes come from the original releases' config files."""

from __future__ import annotations

import dataclasses
import difflib

from lmforge.errors import ConfigError
from lmforge.models.config import ModelConfig

_GPT2 = dict(
    vocab_size=50257,
    context_length=1024,
    mlp="gelu",
    norm="layernorm",
    position="learned",
    bias=True,
    tie_embeddings=True,
)
_LLAMA2 = dict(vocab_size=32000, context_length=4096, rope_theta=10000.0, norm_eps=1e-5)
_LLAMA3 = dict(vocab_size=128256, context_length=8192, rope_theta=500000.0, norm_eps=1e-5)

PRESETS: dict[str, dict] = {
    "gpt2": dict(_GPT2, dim=768, num_layers=12, num_heads=12),
    "gpt2-medium": dict(_GPT2, dim=1024, num_layers=24, num_heads=16),
    "gpt2-large": dict(_GPT2, dim=1280, num_layers=36, num_heads=20),
    "gpt2-xl": dict(_GPT2, dim=1600, num_layers=48, num_heads=25),
    "llama2-7b": dict(_LLAMA2, dim=4096, num_layers=32, num_heads=32, ffn_dim=11008),
    "llama2-13b": dict(_LLAMA2, dim=5120, num_layers=40, num_heads=40, ffn_dim=13824),
    "llama3-8b": dict(
        _LLAMA3, dim=4096, num_layers=32, num_heads=32, num_kv_heads=8, ffn_dim=14336
    ),
    "llama3.1-8b": dict(
        _LLAMA3,
        context_length=131072,
        dim=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        ffn_dim=14336,
        rope_scaling="llama3",
        rope_scaling_factor=8.0,
    ),
    "llama3.2-1b": dict(
        _LLAMA3,
        context_length=131072,
        dim=2048,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        ffn_dim=8192,
        rope_scaling="llama3",
        rope_scaling_factor=32.0,
        tie_embeddings=True,
    ),
    "llama3.2-3b": dict(
        _LLAMA3,
        context_length=131072,
        dim=3072,
        num_layers=28,
        num_heads=24,
        num_kv_heads=8,
        ffn_dim=8192,
        rope_scaling="llama3",
        rope_scaling_factor=32.0,
        tie_embeddings=True,
    ),
    "smollm2-135m": dict(
        vocab_size=49152,
        context_length=8192,
        dim=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        ffn_dim=1536,
        rope_theta=100000.0,
        norm_eps=1e-5,
        tie_embeddings=True,
    ),
    # DeepSeek-V2-Lite: MLA without query compression, 64 routed + 2 shared experts, first layer dense.
    "deepseek-v2-lite": dict(
        vocab_size=102400,
        context_length=163840,
        dim=2048,
        num_layers=27,
        num_heads=16,
        ffn_dim=10944,
        norm_eps=1e-6,
        attention="mla",
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        rope_scaling="yarn",
        rope_scaling_factor=40.0,
        rope_original_context_length=4096,
        rope_yarn_mscale=0.707,
        rope_yarn_mscale_all_dim=0.707,
        ffn="moe",
        num_experts=64,
        experts_per_token=6,
        moe_ffn_dim=1408,
        num_shared_experts=2,
        moe_norm_topk=False,
        moe_first_dense_layers=1,
    ),
    "mixtral-8x7b": dict(
        vocab_size=32000,
        context_length=32768,
        dim=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        ffn_dim=14336,
        rope_theta=1e6,
        ffn="moe",
        num_experts=8,
        experts_per_token=2,
    ),
    # Tiny shapes for tests and the laptop quickstart; vocab_size comes from the tokenizer.
    "tiny-deepseek": dict(
        context_length=128,
        dim=64,
        num_layers=3,
        num_heads=4,
        ffn_dim=128,
        attention="mla",
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        ffn="moe",
        num_experts=8,
        experts_per_token=2,
        moe_ffn_dim=32,
        num_shared_experts=1,
        moe_norm_topk=False,
        moe_first_dense_layers=1,
    ),
    "tiny-mixtral": dict(
        context_length=128,
        dim=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        ffn_dim=96,
        ffn="moe",
        num_experts=4,
        experts_per_token=2,
        sliding_window=64,
    ),
    "tiny-llama": dict(context_length=128, dim=64, num_layers=2, num_heads=4, num_kv_heads=2),
    "tiny-gpt2": dict(
        _GPT2, vocab_size=None, context_length=128, dim=64, num_layers=2, num_heads=4
    ),
    "small-llama": dict(
        context_length=256, dim=256, num_layers=6, num_heads=8, num_kv_heads=4, tie_embeddings=True
    ),
}


def preset_fields(name: str) -> dict:
    """The field values of a named preset (a fresh dict)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(PRESETS)}"
        raise ConfigError(f"unknown model preset '{name}'; {hint}")
    return dict(PRESETS[name])


def model_preset(name: str, **overrides) -> ModelConfig:
    """Build the ModelConfig for a preset, with optional field overrides."""
    fields = preset_fields(name) | overrides
    return dataclasses.replace(ModelConfig(), preset=name, **fields)
