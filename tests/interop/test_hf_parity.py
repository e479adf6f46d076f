"""Hugging Face parity: tiny random transformers models and lmforge give the same logits and the
same greedy continuations after converting configs and weights with lmforge.formats (hf_config,
hf_weights), both ways. The models and conversions are in hf_fixtures.
"""

from __future__ import annotations

import pytest
import torch
from hf_fixtures import (
    CONTEXT,
    HF_CASES,
    LLAMA3_SCALING,
    VOCAB,
    assert_exports_back,
    hf_greedy,
    hf_model,
    llama_shape,
    random_tokens,
    randomize,
    to_hf,
    to_lmforge,
)

from lmforge.errors import CheckpointError, ConfigError
from lmforge.formats.hf_config import hf_config_from_model_config, model_config_from_hf
from lmforge.formats.hf_weights import state_dict_from_hf
from lmforge.inference.generate import SamplingConfig, generate
from lmforge.models.presets import model_preset
from lmforge.models.transformer import Transformer

TOLERANCE = dict(atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", HF_CASES)
@torch.no_grad()
def test_hf_to_lmforge_logits_match(case):
    reference = hf_model(case)
    model = to_lmforge(reference)
    tokens = random_tokens()
    torch.testing.assert_close(model(tokens), reference(tokens).logits, **TOLERANCE)


@pytest.mark.parametrize("case", HF_CASES)
def test_hf_to_lmforge_greedy_generation_matches(case):
    reference = hf_model(case)
    model = to_lmforge(reference)
    prompt = random_tokens(1, 8)[0].tolist()
    ours = generate(model, [prompt], SamplingConfig(max_new_tokens=10, temperature=0.0))
    assert ours == hf_greedy(reference, [prompt], 10)


@pytest.mark.parametrize("case", ["gpt2-tied", "llama3-scaling-untied", "qwen2-qkv-bias"])
def test_batched_left_padded_generation_matches(case):
    reference = hf_model(case)
    model = to_lmforge(reference)
    rows = random_tokens(3, 9).tolist()
    prompts = [rows[0][:4], rows[1], rows[2][:6]]
    ours = generate(model, prompts, SamplingConfig(max_new_tokens=10, temperature=0.0))
    assert ours == hf_greedy(reference, prompts, 10)


@pytest.mark.parametrize("case", HF_CASES)
def test_hf_round_trip_is_lossless(case):
    reference = hf_model(case)
    model = to_lmforge(reference)
    assert_exports_back(reference, model)


EXPORT_CASES = {
    "tiny-llama-untied": model_preset("tiny-llama", vocab_size=VOCAB, ffn_dim=96),
    "tiny-llama-tied": model_preset("tiny-llama", vocab_size=VOCAB, tie_embeddings=True),
    "llama3-scaling": model_preset(
        "tiny-llama",
        vocab_size=VOCAB,
        rope_theta=500000.0,
        rope_scaling="llama3",
        rope_original_context_length=16,
    ),
    "qwen2-qkv-bias": model_preset("tiny-llama", vocab_size=VOCAB, qkv_bias=True, norm_eps=1e-6),
    "tiny-gpt2-tied": model_preset("tiny-gpt2", vocab_size=VOCAB),
    "tiny-gpt2-untied": model_preset("tiny-gpt2", vocab_size=VOCAB, tie_embeddings=False),
}


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_lmforge_to_hf_logits_and_generation_match(case):
    torch.manual_seed(0)
    model = randomize(Transformer(EXPORT_CASES[case]))
    exported = to_hf(model)
    tokens = random_tokens()
    with torch.no_grad():
        torch.testing.assert_close(exported(tokens).logits, model(tokens), **TOLERANCE)
    prompt = tokens[0, :8].tolist()
    ours = generate(model, [prompt], SamplingConfig(max_new_tokens=10, temperature=0.0))
    assert ours == hf_greedy(exported, [prompt], 10)


def test_export_then_import_gives_back_the_config():
    for config in EXPORT_CASES.values():
        back = model_config_from_hf(hf_config_from_model_config(config))
        assert back.shape_dict() == config.shape_dict()
        assert (back.rope_scaling, back.rope_theta, back.norm_eps) == (
            config.rope_scaling,
            config.rope_theta,
            config.norm_eps,
        )


def test_transformers4_style_rope_keys_are_read():
    hf = llama_shape(model_type="llama", rope_theta=500000.0)
    hf["rope_scaling"] = {k: v for k, v in LLAMA3_SCALING.items() if k != "rope_type"}
    hf["rope_scaling"]["type"] = "llama3"  # the pre-4.45 spelling
    config = model_config_from_hf(hf)
    assert (config.rope_theta, config.rope_scaling) == (500000.0, "llama3")
    assert config.rope_original_context_length == 16


def test_original_gpt2_checkpoint_keys_load():
    """The hub's gpt2 weights were saved from GPT2Model: no "transformer." prefix, mask buffers."""
    reference = hf_model("gpt2-tied")
    bare = {k.removeprefix("transformer."): v for k, v in reference.state_dict().items()}
    bare.pop("lm_head.weight")
    bare["h.0.attn.bias"] = torch.ones(1, 1, CONTEXT, CONTEXT)
    config = model_config_from_hf(reference.config.to_dict())
    Transformer(config).load_state_dict(state_dict_from_hf(bare, config, "gpt2"))


@pytest.mark.parametrize(
    ("hf_config", "message"),
    [
        ({"model_type": "bert"}, "cannot import HF model_type 'bert'"),
        (llama_shape(model_type="qwen2", sliding_window=16), "sliding_window=16"),
        (
            llama_shape(model_type="llama", rope_scaling={"rope_type": "longrope"}),
            "rope_type 'longrope'",
        ),
        (llama_shape(model_type="llama", hidden_act="gelu"), "hidden_act 'gelu'"),
        (llama_shape(model_type="llama", attention_bias=True), "attention_bias"),
        ({"model_type": "gpt2", "n_embd": 64}, "no 'vocab_size'"),
    ],
)
def test_unsupported_configs_raise_config_error(hf_config, message):
    with pytest.raises(ConfigError, match=message):
        model_config_from_hf(hf_config)


def test_mismatched_weights_raise_checkpoint_error():
    reference = hf_model("llama-gqa-untied")
    config = model_config_from_hf(reference.config.to_dict())
    state = reference.state_dict()
    with pytest.raises(CheckpointError, match="lack model.layers.0.self_attn.q_proj.weight"):
        state_dict_from_hf({k: v for k, v in state.items() if "q_proj" not in k}, config, "llama")
    with pytest.raises(CheckpointError, match="no place for"):
        state_dict_from_hf(state | {"model.extra.weight": torch.zeros(1)}, config, "llama")
    wider = model_config_from_hf(reference.config.to_dict() | {"intermediate_size": 128})
    with pytest.raises(CheckpointError, match="does not match"):
        state_dict_from_hf(state, wider, "llama")
    with pytest.raises(CheckpointError, match="model_type 't5'"):
        state_dict_from_hf(state, config, "t5")


def test_unexportable_config_raises_config_error():
    with pytest.raises(ConfigError, match="no HF architecture matches"):
        hf_config_from_model_config(model_preset("tiny-llama", vocab_size=VOCAB, mlp="gelu"))
    with pytest.raises(ConfigError, match="plain MHA"):  # GPT-2 has no grouped-query attention
        hf_config_from_model_config(model_preset("tiny-gpt2", vocab_size=VOCAB, num_kv_heads=2))
    with pytest.raises(ConfigError, match="vocab_size is unset"):
        hf_config_from_model_config(model_preset("tiny-llama"))
