"""Multi-head Latent Attention: latent KV cache, absorbed weights, cache sizes, bad ranks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import build, tiny_model
from zoo_fixtures import assert_causal, cached_logits

from lmforge.errors import ConfigError
from lmforge.inference.generate import SamplingConfig, generate
from lmforge.models.kv_cache import KVCache, kv_cache_bytes_per_token

V = 97
MLA = dict(attention="mla", kv_lora_rank=24, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12)


def mla_config(**overrides):
    return tiny_model(vocab_size=V, **(MLA | overrides))


@pytest.mark.parametrize("q_lora_rank", [None, 32])
@pytest.mark.parametrize("absorb", [False, True])
def test_cached_decoding_equals_full_recomputation(q_lora_rank, absorb):
    model = build(mla_config(q_lora_rank=q_lora_rank, mla_absorb=absorb))
    tokens = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens)
    torch.testing.assert_close(cached_logits(model, tokens, prefill=4), full, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_absorbed_path_equals_plain_path():
    plain = build(mla_config(q_lora_rank=32))
    absorbed = build(dataclasses.replace(plain.config, mla_absorb=True))
    absorbed.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(1))
    reference = plain(tokens)
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(absorbed(tokens), reference, atol=1e-5, rtol=1e-4)
    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]  # left padding goes through the mask too
    assert generate(absorbed, prompts, greedy) == generate(plain, prompts, greedy)


def test_mla_is_causal():
    assert_causal(build(mla_config()), V)


def test_cache_stores_the_latent_not_full_keys_and_values():
    config = mla_config()
    cache = KVCache(config, batch_size=2, max_len=10, device="cpu", dtype=torch.bfloat16)
    assert cache.keys[0].shape == (2, 1, 10, 24) and cache.values[0].shape == (2, 1, 10, 8)
    assert cache.bytes_per_token() == kv_cache_bytes_per_token(config) == 2 * 2 * (24 + 8)


def test_cache_bytes_per_token_for_each_attention_kind():
    def per_token(**fields):
        return kv_cache_bytes_per_token(tiny_model(vocab_size=V, **fields), bytes_per_element=1)

    # tiny-llama: 2 layers, 4 heads of width 16.
    assert per_token(num_kv_heads=4) == 2 * 2 * 4 * 16  # MHA
    assert per_token(num_kv_heads=2) == 2 * 2 * 2 * 16  # GQA
    assert per_token(num_kv_heads=1) == 2 * 2 * 1 * 16  # MQA
    assert per_token(**MLA) == 2 * (24 + 8)  # MLA: latent + shared rope key


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(kv_lora_rank=200), "kv_lora_rank=200 compresses nothing"),
        (dict(q_lora_rank=64), "q_lora_rank=64 must be smaller than model.dim=64"),
        (dict(qk_rope_head_dim=7), "RoPE needs an even head_dim, got 7"),
        (dict(v_head_dim=0), r"v_head_dim must be in \[1, "),
    ],
)
def test_mla_ranks_that_do_not_fit_raise_config_error(fields, message):
    with pytest.raises(ConfigError, match=message):
        mla_config(**fields).validate()
