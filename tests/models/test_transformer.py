"""Model shapes per family, flavour-specific structure, causality and init."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build, tiny_model
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.config import ModelConfig
from lmforge.models.presets import model_preset
from lmforge.models.transformer import Transformer

V = 97  # deliberately not a multiple of 64
FAMILIES = {
    "gpt2": dict(preset="tiny-gpt2"),
    "llama-gqa": dict(preset="tiny-llama"),
    "mqa": dict(preset="tiny-llama", num_kv_heads=1),
    "mha": dict(preset="tiny-llama", num_kv_heads=4),
    "qkv-bias": dict(preset="tiny-llama", qkv_bias=True),
    "llama3-rope": dict(
        preset="tiny-llama", rope_scaling="llama3", rope_original_context_length=64
    ),
    "explicit-head-dim": dict(preset="tiny-llama", head_dim=24, num_kv_heads=2),
}


def family_config(name: str) -> ModelConfig:
    fields = dict(FAMILIES[name])
    return tiny_model(fields.pop("preset"), vocab_size=V, **fields)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize(("batch", "length"), [(1, 1), (3, 17)])
def test_logits_shape(name, batch, length):
    model = build(family_config(name))
    tokens = torch.randint(0, V, (batch, length))
    logits = model(tokens)
    assert logits.shape == (batch, length, V)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_full_context_length_fits_and_longer_raises():
    config = family_config("gpt2")
    model = build(config)
    assert model(torch.zeros(1, config.context_length, dtype=torch.long)).shape[1] == 128
    with pytest.raises(ValueError, match="exceeds the model's context length 128"):
        model(torch.zeros(1, config.context_length + 1, dtype=torch.long))


def test_gpt2_flavour_structure():
    model = build(family_config("gpt2"))
    c = model.config
    assert isinstance(model.final_norm, nn.LayerNorm) and model.final_norm.bias is not None
    assert model.position_embedding.weight.shape == (c.context_length, c.dim)
    block = model.layers[0]
    assert block.attn.qkv.bias is not None and block.attn.out.bias is not None
    assert block.ffn.up.weight.shape == (4 * c.dim, c.dim)  # gelu MLP, no gate
    assert block.ffn.up.bias is not None and block.ffn.down.bias is not None
    assert model.lm_head.weight is model.token_embedding.weight  # tied
    # Tied parameters are one parameter.
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and "token_embedding.weight" in names


def test_llama_flavour_structure():
    config = family_config("llama-gqa")
    model = build(config)
    assert not hasattr(model, "position_embedding")
    assert isinstance(model.final_norm, nn.RMSNorm)
    attn = model.layers[0].attn
    head_dim = config.dim // config.num_heads
    assert attn.qkv.weight.shape == ((4 + 2 * 2) * head_dim, config.dim)  # H=4, KV=2
    assert attn.qkv.bias is None and attn.out.bias is None
    # SwiGLU: fused gate+up of width 2 * hidden, hidden = 8/3 * dim rounded up to 64.
    hidden = 64 * math.ceil(int(8 * config.dim / 3) / 64)
    assert config.hidden_dim == hidden == 192
    assert model.layers[0].ffn.up.weight.shape == (2 * hidden, config.dim)
    assert model.layers[0].ffn.down.weight.shape == (config.dim, hidden)
    assert model.lm_head.weight is not model.token_embedding.weight


@pytest.mark.parametrize(("kv_heads", "expected_kv"), [(None, 4), (4, 4), (2, 2), (1, 1)])
def test_attention_head_counts(kv_heads, expected_kv):
    config = tiny_model("tiny-llama", vocab_size=V, num_kv_heads=kv_heads)
    attn = build(config).layers[0].attn
    assert attn.num_kv_heads == expected_kv
    assert attn.qkv.weight.shape[0] == (4 + 2 * expected_kv) * 16


def test_qkv_bias_only_on_qkv():
    model = build(family_config("qkv-bias"))
    attn = model.layers[0].attn
    assert attn.qkv.bias is not None and attn.out.bias is None
    assert model.layers[0].ffn.up.bias is None


def test_gqa_equals_mha_with_repeated_kv_heads():
    """GQA must behave exactly like MHA whose key/value heads are repeated per group."""
    gqa_config = tiny_model("tiny-llama", vocab_size=V, num_kv_heads=2)
    mha_config = tiny_model("tiny-llama", vocab_size=V, num_kv_heads=4)
    gqa, mha = build(gqa_config, seed=1), build(mha_config, seed=2)
    state = gqa.state_dict()
    D, H, KV = 16, 4, 2
    for i in range(gqa_config.num_layers):
        w = state[f"layers.{i}.attn.qkv.weight"]
        q, k, v = w.split([H * D, KV * D, KV * D])
        repeat = lambda t: t.view(KV, D, -1).repeat_interleave(H // KV, dim=0).reshape(H * D, -1)  # noqa: E731
        state[f"layers.{i}.attn.qkv.weight"] = torch.cat([q, repeat(k), repeat(v)])
    mha.load_state_dict(state)
    tokens = torch.randint(0, V, (2, 20))
    torch.testing.assert_close(mha(tokens), gqa(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "mqa"])
def test_causality_future_token_does_not_change_past_logits(name):
    model = build(family_config(name))
    tokens = torch.randint(0, V, (2, 24))
    changed = tokens.clone()
    t = 15
    changed[:, t] = (tokens[:, t] + 1) % V
    before, after = model(tokens), model(changed)
    assert torch.equal(before[:, :t], after[:, :t])
    # ...while the changed position and later ones do change.
    assert not torch.allclose(before[:, t:], after[:, t:])


def test_causality_through_gradients():
    """d logits[t] / d embedding[s] is zero for every s > t."""
    model = build(family_config("llama-gqa"))
    tokens = torch.randint(0, V, (1, 12))
    embeddings = model.token_embedding(tokens).detach().requires_grad_(True)
    model.token_embedding.forward = lambda _tokens: embeddings  # feed the leaf tensor
    model(tokens)[0, 5].sum().backward()
    grad = embeddings.grad[0].abs().sum(-1)
    assert (grad[6:] == 0).all()
    assert (grad[:6] > 0).all()


def test_init_std_and_residual_scaling():
    config = tiny_model("tiny-llama", vocab_size=4096, dim=256, num_heads=4, num_layers=8)
    model = build(config)
    std = config.init_std
    assert model.token_embedding.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.layers[0].attn.qkv.weight.std().item() == pytest.approx(std, rel=0.05)
    residual = std / math.sqrt(2 * config.num_layers)
    assert model.layers[3].attn.out.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.layers[3].ffn.down.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert torch.equal(model.final_norm.weight, torch.ones(config.dim))


def test_same_seed_same_weights():
    a, b = build(family_config("gpt2"), seed=3), build(family_config("gpt2"), seed=3)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_dropout_only_in_training_mode():
    model = build(tiny_model("tiny-llama", vocab_size=V, dropout=0.5))
    tokens = torch.randint(0, V, (1, 10))
    assert torch.equal(model(tokens), model(tokens))  # eval: deterministic
    model.train()
    assert not torch.equal(model(tokens), model(tokens))


def test_bf16_autocast_forward_close_to_fp32():
    model = build(family_config("llama-gqa"))
    tokens = torch.randint(0, V, (2, 16))
    reference = model(tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(tokens)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, atol=0.05, rtol=0.05)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(dim=65), "does not divide model.dim=65"),
        (dict(num_kv_heads=3), "num_kv_heads=3 must be positive and divide"),
        (dict(num_layers=0), r"model.num_layers must be in \[1, 2,048\], got 0"),
        (dict(head_dim=15), "RoPE needs an even head_dim"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(vocab_size=0), r"vocab_size must be in \[1, "),
    ],
)
def test_invalid_shapes_raise_config_error(overrides, message):
    config = model_preset("tiny-llama", **{"vocab_size": V, **overrides})
    with pytest.raises(ConfigError, match=message):
        Transformer(config)


def test_divisor_suggestion_in_heads_error():
    with pytest.raises(ConfigError, match=r"e\.g\. 5\)"):
        model_preset("tiny-llama", vocab_size=V, dim=65, num_heads=4).validate()
