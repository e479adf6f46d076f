"""Hugging Face parity: tiny random transformers models and lmforge give the same logits and the
same greedy continuations after converting configs and weights with lmforge.formats (hf_config, hf_weights), both ways.

Weights are re-drawn with std 0.2 (HF's 0.02 init makes every logit nearly zero, which would make
the comparison vacuous) and norms/biases are made non-trivial so a swapped or dropped tensor shows.
"""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import CheckpointError, ConfigError
from lmforge.formats.hf_config import hf_config_from_model_config, model_config_from_hf
from lmforge.formats.hf_weights import state_dict_from_hf, state_dict_to_hf
from lmforge.inference.generate import SamplingConfig, generate
from lmforge.models.presets import model_preset
from lmforge.models.transformer import Transformer

transformers = pytest.importorskip("transformers")

VOCAB = 96
CONTEXT = 64
TOLERANCE = dict(atol=1e-5, rtol=1e-4)
LLAMA3_SCALING = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    # Small, so that with head_dim 16 some frequencies are scaled, some smoothed, some kept.
    original_max_position_embeddings=16,
)


def _llama_shape(**overrides) -> dict:
    shape = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-6,
    )
    return shape | overrides


def _gpt2(tied: bool):
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=CONTEXT,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=tied,
    )
    return transformers.GPT2LMHeadModel(config)


HF_CASES = {
    "gpt2-tied": lambda: _gpt2(tied=True),
    "gpt2-untied": lambda: _gpt2(tied=False),
    "llama-gqa-tied": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**_llama_shape(tie_word_embeddings=True))
    ),
    "llama-gqa-untied": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**_llama_shape(tie_word_embeddings=False))
    ),
    "llama3-scaling-tied": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            **_llama_shape(tie_word_embeddings=True, rope_theta=500000.0),
            rope_scaling=LLAMA3_SCALING,
        )
    ),
    "llama3-scaling-untied": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**_llama_shape(), rope_scaling=LLAMA3_SCALING)
    ),
    "mistral-head-dim": lambda: transformers.MistralForCausalLM(
        transformers.MistralConfig(**_llama_shape(head_dim=32, sliding_window=None))
    ),
    "qwen2-qkv-bias": lambda: transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(**_llama_shape(tie_word_embeddings=True))
    ),
}


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():  # tied weights are listed once
        noise = torch.randn(param.shape, generator=generator)
        if param.ndim >= 2:
            param.copy_(0.2 * noise)
        elif name.endswith("weight"):  # norm gains
            param.copy_(1.0 + 0.1 * noise)
        else:  # biases
            param.copy_(0.1 * noise)
    return model.eval()


def _hf_model(case: str):
    torch.manual_seed(0)
    model = _randomize(HF_CASES[case]())
    model.config._attn_implementation = "eager"  # the plain math reference
    return model


def _to_lmforge(hf_model) -> Transformer:
    hf_config = hf_model.config.to_dict()
    config = model_config_from_hf(hf_config)
    model = Transformer(config)
    state = state_dict_from_hf(hf_model.state_dict(), config, hf_config["model_type"])
    model.load_state_dict(state, strict=True)
    if config.tie_embeddings:
        assert model.lm_head.weight is model.token_embedding.weight
    return model.eval()


def _to_hf(model: Transformer):
    hf_config = transformers.AutoConfig.for_model(**hf_config_from_model_config(model.config))
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
    missing, unexpected = hf_model.load_state_dict(
        state_dict_to_hf(model.state_dict(), model.config), strict=False
    )
    assert not unexpected
    assert missing == (["lm_head.weight"] if model.config.tie_embeddings else [])
    return hf_model.eval()


def _tokens(batch: int = 2, length: int = 20) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def _hf_greedy(hf_model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    # Left-pad like lmforge does; eos off so both sides always emit exactly new_tokens.
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    hf_model.generation_config.eos_token_id = None
    hf_model.generation_config.pad_token_id = 0
    out = hf_model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens
    )
    return out[:, width:].tolist()


@pytest.mark.parametrize("case", HF_CASES)
@torch.no_grad()
def test_hf_to_lmforge_logits_match(case):
    hf_model = _hf_model(case)
    model = _to_lmforge(hf_model)
    tokens = _tokens()
    torch.testing.assert_close(model(tokens), hf_model(tokens).logits, **TOLERANCE)


@pytest.mark.parametrize("case", HF_CASES)
def test_hf_to_lmforge_greedy_generation_matches(case):
    hf_model = _hf_model(case)
    model = _to_lmforge(hf_model)
    prompt = _tokens(1, 8)[0].tolist()
    ours = generate(model, [prompt], SamplingConfig(max_new_tokens=10, temperature=0.0))
    assert ours == _hf_greedy(hf_model, [prompt], 10)


@pytest.mark.parametrize("case", ["gpt2-tied", "llama3-scaling-untied", "qwen2-qkv-bias"])
def test_batched_left_padded_generation_matches(case):
    hf_model = _hf_model(case)
    model = _to_lmforge(hf_model)
    rows = _tokens(3, 9).tolist()
    prompts = [rows[0][:4], rows[1], rows[2][:6]]
    ours = generate(model, prompts, SamplingConfig(max_new_tokens=10, temperature=0.0))
    assert ours == _hf_greedy(hf_model, prompts, 10)


@pytest.mark.parametrize("case", HF_CASES)
def test_hf_round_trip_is_lossless(case):
    hf_model = _hf_model(case)
    model = _to_lmforge(hf_model)
    back = state_dict_to_hf(model.state_dict(), model.config)
    original = hf_model.state_dict()
    if model.config.tie_embeddings:
        original.pop("lm_head.weight")
    assert back.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(back[key], tensor), key


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
    model = _randomize(Transformer(EXPORT_CASES[case]))
    hf_model = _to_hf(model)
    tokens = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(hf_model(tokens).logits, model(tokens), **TOLERANCE)
    prompt = tokens[0, :8].tolist()
    ours = generate(model, [prompt], SamplingConfig(max_new_tokens=10, temperature=0.0))
    assert ours == _hf_greedy(hf_model, [prompt], 10)


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
    hf = _llama_shape(model_type="llama", rope_theta=500000.0)
    hf["rope_scaling"] = {k: v for k, v in LLAMA3_SCALING.items() if k != "rope_type"}
    hf["rope_scaling"]["type"] = "llama3"  # the pre-4.45 spelling
    config = model_config_from_hf(hf)
    assert (config.rope_theta, config.rope_scaling) == (500000.0, "llama3")
    assert config.rope_original_context_length == 16


def test_original_gpt2_checkpoint_keys_load():
    """The hub's gpt2 weights were saved from GPT2Model: no "transformer." prefix, mask buffers."""
    hf_model = _hf_model("gpt2-tied")
    bare = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
    bare.pop("lm_head.weight")
    bare["h.0.attn.bias"] = torch.ones(1, 1, CONTEXT, CONTEXT)
    config = model_config_from_hf(hf_model.config.to_dict())
    Transformer(config).load_state_dict(state_dict_from_hf(bare, config, "gpt2"))


@pytest.mark.parametrize(
    ("hf_config", "message"),
    [
        ({"model_type": "bert"}, "cannot import HF model_type 'bert'"),
        (_llama_shape(model_type="qwen2", sliding_window=16), "sliding_window=16"),
        (
            _llama_shape(model_type="llama", rope_scaling={"rope_type": "longrope"}),
            "rope_type 'longrope'",
        ),
        (_llama_shape(model_type="llama", hidden_act="gelu"), "hidden_act 'gelu'"),
        (_llama_shape(model_type="llama", attention_bias=True), "attention_bias"),
        ({"model_type": "gpt2", "n_embd": 64}, "no 'vocab_size'"),
    ],
)
def test_unsupported_configs_raise_config_error(hf_config, message):
    with pytest.raises(ConfigError, match=message):
        model_config_from_hf(hf_config)


def test_mismatched_weights_raise_checkpoint_error():
    hf_model = _hf_model("llama-gqa-untied")
    config = model_config_from_hf(hf_model.config.to_dict())
    state = hf_model.state_dict()
    with pytest.raises(CheckpointError, match="lack model.layers.0.self_attn.q_proj.weight"):
        state_dict_from_hf({k: v for k, v in state.items() if "q_proj" not in k}, config, "llama")
    with pytest.raises(CheckpointError, match="no place for"):
        state_dict_from_hf(state | {"model.extra.weight": torch.zeros(1)}, config, "llama")
    wider = model_config_from_hf(hf_model.config.to_dict() | {"intermediate_size": 128})
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
