"""ALiBi, sinusoidal, NoPE and sliding-window attention: causality, cached decoding, windows; YaRN."""

from __future__ import annotations

import pytest
import torch
from conftest import build, tiny_model
from zoo_fixtures import assert_causal, cached_logits

from lmforge.inference.generate import SamplingConfig, generate
from lmforge.models.positions import alibi_slopes, rope_attention_factor, rope_inverse_frequencies

V = 97
VARIANTS = {
    "alibi": dict(position="alibi"),
    "sinusoidal": dict(position="sinusoidal"),
    "nope": dict(position="none"),
    "window": dict(sliding_window=4),
    "window-alibi-mla": dict(position="alibi", sliding_window=5, attention="mla"),
    "yarn": dict(rope_scaling="yarn", rope_scaling_factor=4.0, rope_original_context_length=32),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_future_tokens_do_not_change_earlier_logits(name):
    assert_causal(build(tiny_model(vocab_size=V, **VARIANTS[name])), V)


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decoding_equals_full_recomputation(name):
    model = build(tiny_model(vocab_size=V, **VARIANTS[name]))
    tokens = torch.randint(0, V, (2, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens)
    torch.testing.assert_close(cached_logits(model, tokens, prefill=5), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["alibi", "window"])
def test_left_padded_batch_generates_like_single_rows(name):
    model = build(tiny_model(vocab_size=V, **VARIANTS[name]))
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]]
    greedy = SamplingConfig(max_new_tokens=6, temperature=0.0)
    together = generate(model, prompts, greedy)
    assert together == [generate(model, [p], greedy)[0] for p in prompts]


@torch.no_grad()
def test_sliding_window_forgets_tokens_outside_it():
    model = build(tiny_model(vocab_size=V, sliding_window=3, num_layers=1))
    tokens = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(0))
    edited = tokens.clone()
    edited[0, 2] = (edited[0, 2] + 1) % V
    # One layer, window 3: position 5 sees 3..5, so token 2 cannot reach it; position 4 sees 2..4.
    a, b = model(tokens), model(edited)
    torch.testing.assert_close(a[0, 5:], b[0, 5:], atol=1e-6, rtol=0)
    assert (a[0, 4] - b[0, 4]).abs().max() > 1e-4


def test_alibi_slopes_follow_the_paper():
    assert alibi_slopes(8).tolist() == pytest.approx([2 ** -(i + 1) for i in range(8)])
    six = alibi_slopes(6).tolist()  # 4 from the power-of-two series, then odd steps of the 8 series
    assert six == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])


def test_yarn_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = dict(rope_type="yarn", rope_theta=10000.0, factor=8.0)
    rope |= dict(original_max_position_embeddings=64, mscale=0.9, mscale_all_dim=0.7)
    hf = transformers.LlamaConfig(
        hidden_size=256, num_attention_heads=4, max_position_embeddings=512, rope_parameters=rope
    )
    inv_freq, factor = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    config = tiny_model(
        vocab_size=V,
        dim=256,
        rope_scaling="yarn",
        rope_scaling_factor=8.0,
        rope_original_context_length=64,
        rope_yarn_mscale=0.9,
        rope_yarn_mscale_all_dim=0.7,
    )
    torch.testing.assert_close(rope_inverse_frequencies(config), inv_freq)
    assert rope_attention_factor(config) == pytest.approx(factor)
    assert not torch.equal(inv_freq, rope_inverse_frequencies(tiny_model(vocab_size=V, dim=256)))
