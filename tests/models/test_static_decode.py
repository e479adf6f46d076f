"""StaticKVCache (fixed-shape decoding) and the compiled decode step equal the growing KVCache."""

from __future__ import annotations

import pytest
import torch
from conftest import build, tiny_model

from lmforge.inference.generate import SamplingConfig, generate
from lmforge.models.kv_cache import KVCache
from lmforge.models.static_kv_cache import StaticKVCache, static_cache_supported

V = 101
FAMILIES = {
    "llama": dict(preset="tiny-llama"),
    "gpt2": dict(preset="tiny-gpt2"),
    "mla-dense": dict(preset="tiny-deepseek", ffn="dense"),
    "mla-absorbed": dict(preset="tiny-deepseek", ffn="dense", mla_absorb=True),
}


def model_for(name: str, **overrides):
    fields = dict(FAMILIES[name])
    config = tiny_model(fields.pop("preset"), vocab_size=V, init_std=0.15, **fields, **overrides)
    return build(config, seed=3)


def step_logits(model, cache, tokens: torch.Tensor, pads: torch.Tensor) -> torch.Tensor:
    """Padded prefill of the first 6 slots, then one token at a time; logits of every step."""
    cache.set_padding(pads)
    positions = (torch.arange(tokens.shape[1])[None, :] - pads[:, None]).clamp(min=0)
    steps = [model(tokens[:, :6], cache=cache, positions=positions[:, :6])]
    for t in range(6, tokens.shape[1]):
        steps.append(model(tokens[:, t : t + 1], cache=cache, positions=positions[:, t : t + 1]))
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("name", FAMILIES)
def test_static_cache_logits_equal_growing_cache(name):
    model = model_for(name)
    tokens = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(0))
    pads = torch.tensor([3, 0])
    grown = step_logits(model, KVCache(model.config, 2, 24, "cpu", torch.float32), tokens, pads)
    static = StaticKVCache(model.config, 2, 24, "cpu", torch.float32)
    fixed = step_logits(model, static, tokens, pads)
    assert static.length == 20
    real = torch.ones(2, 20, dtype=torch.bool)
    real[0, :3] = False  # padding slots' logits are meaningless in both
    torch.testing.assert_close(fixed[real], grown[real], atol=2e-5, rtol=1e-5)


def test_static_cache_default_positions_follow_the_slot():
    model = model_for("llama")
    tokens = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(1))
    cache = StaticKVCache(model.config, 1, 16, "cpu", torch.float32)
    steps = [model(tokens[:, :5], cache=cache)]
    steps += [model(tokens[:, t : t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), model(tokens), atol=2e-5, rtol=1e-5)


def test_models_the_static_cache_cannot_serve_use_the_growing_one():
    assert static_cache_supported(tiny_model("tiny-llama", vocab_size=V))
    assert not static_cache_supported(tiny_model("tiny-llama", vocab_size=V, sliding_window=8))
    assert not static_cache_supported(tiny_model("tiny-llama", vocab_size=V, position="alibi"))
    assert not static_cache_supported(tiny_model("tiny-deepseek", vocab_size=V))  # MoE
    with pytest.raises(ValueError, match="need KVCache"):
        StaticKVCache(tiny_model("tiny-deepseek", vocab_size=V), 1, 8, "cpu", torch.float32)


def test_compiled_decode_step_generates_the_eager_tokens():
    model = model_for("llama")
    batch = [[5, 9, 2], [7, 1, 4, 4, 8, 3]]
    config = SamplingConfig(max_new_tokens=40, temperature=0.0)
    eager = generate(model, batch, config)
    compiled = generate(model, batch, config, compile=True)
    again = generate(model, [batch[1]], config, compile=True)  # new batch size: recompiles
    assert compiled == eager
    assert again[0] == eager[1]
    assert len(set(eager[0])) > 1
