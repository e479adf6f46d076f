"""Parameter counts of published presets (meta device) and the FLOPs-per-token formula."""

from __future__ import annotations

import pytest
from conftest import build, tiny_model

from lmforge.errors import ConfigError
from lmforge.models.counting import (
    build_on_meta,
    count_parameters,
    flops_per_token,
    matmul_parameters,
)
from lmforge.models.presets import PRESETS, model_preset

# Published Hugging Face counts (model.num_parameters()) of the original checkpoints.
PUBLISHED = {
    "gpt2": 124_439_808,
    "llama2-7b": 6_738_415_616,
    "llama3-8b": 8_030_261_248,
    "llama3.1-8b": 8_030_261_248,
    "llama3.2-1b": 1_235_814_400,
    "llama3.2-3b": 3_212_749_824,  # the HF model card's safetensors count
    "smollm2-135m": 134_515_008,
}


@pytest.mark.parametrize(("name", "expected"), PUBLISHED.items())
def test_published_parameter_counts(name, expected):
    model = build_on_meta(model_preset(name))
    assert next(model.parameters()).is_meta
    assert count_parameters(model) == expected


def test_meta_count_equals_real_count():
    config = tiny_model("tiny-gpt2", vocab_size=300)
    real = build(config)
    assert count_parameters(build_on_meta(config)) == count_parameters(real)
    assert count_parameters(real) == sum(p.numel() for p in real.state_dict().values()) - (
        300 * 64  # the tied head appears twice in the state dict
    )


def test_tied_embedding_counts_once():
    untied = build_on_meta(tiny_model("tiny-llama", vocab_size=1000))
    tied = build_on_meta(tiny_model("tiny-llama", vocab_size=1000, tie_embeddings=True))
    assert count_parameters(untied) - count_parameters(tied) == 1000 * 64


def test_gpt2_hand_count():
    c = model_preset("gpt2")
    d, layers, vocab, ctx = c.dim, c.num_layers, c.vocab_size, c.context_length
    per_layer = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d
    expected = vocab * d + ctx * d + layers * per_layer + 2 * d
    assert expected == PUBLISHED["gpt2"]
    assert count_parameters(build_on_meta(c)) == expected


def test_flops_per_token_formula_llama2_7b():
    model = build_on_meta(model_preset("llama2-7b"))
    seq_len = 2048
    matmul = 6_738_415_616 - 32000 * 4096  # the untied input embedding is a lookup
    assert matmul_parameters(model) == matmul
    expected = 6 * matmul + 12 * 32 * 32 * 128 * seq_len
    assert flops_per_token(model, seq_len) == expected
    assert 42.8e9 < expected < 42.9e9


def test_flops_per_token_formula_gpt2_tied_with_learned_positions():
    model = build_on_meta(model_preset("gpt2"))
    matmul = 124_439_808 - 1024 * 768  # the tied embedding counts once (as the head)
    assert matmul_parameters(model) == matmul
    assert flops_per_token(model, 1024) == 6 * matmul + 12 * 12 * 12 * 64 * 1024


def test_flops_attention_term_grows_linearly_with_seq_len():
    model = build_on_meta(model_preset("llama3-8b"))
    delta = flops_per_token(model, 4096) - flops_per_token(model, 2048)
    assert delta == 12 * 32 * 32 * 128 * 2048


def test_every_preset_builds_on_meta():
    for name in PRESETS:
        config = model_preset(name)
        if config.vocab_size is None:
            config = model_preset(name, vocab_size=4096)
        assert count_parameters(build_on_meta(config)) > 0, name


def test_unknown_preset_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'llama3-8b'"):
        model_preset("llama3-8")
