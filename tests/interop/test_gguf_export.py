"""GGUF export in q8_0 / q4_0 / q4_1 of Llama, GPT-2 and Mixtral-style MoE models: transformers'
GGUF loader (its own reader and dequantizer) gives the same logits as lmforge's model loaded back
from the file; the tensors llama.cpp keeps finer stay so; short rows fall back to f16."""

from __future__ import annotations

import gguf
import pytest
import torch
from gguf_fixtures import random_model, tiny_llama, tiny_tokenizer

from lmforge.checkpoint.directory import save_checkpoint
from lmforge.formats.gguf import model_from_state, read_gguf
from lmforge.formats.hf_config import hf_config_from_model_config
from lmforge.formats.hf_weights import state_dict_to_hf
from lmforge.interop.gguf_export import export_gguf
from lmforge.models.config import ModelConfig

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")

QUANTIZED = ["q8_0", "q4_0", "q4_1"]
# Largest weight error relative to the tensor's largest |value|: q8_0 rounds to 1/127 of a
# 32-value block's max (<= 1/254); q4_0 steps by max/8 (the top code clips: <= 1/8); q4_1 by
# (max - min)/15 (<= 1/15). 1% slack for float rounding.
WEIGHT_RTOL = {"q8_0": 1.01 / 254, "q4_0": 1.01 / 8, "q4_1": 1.01 / 15}


def _config(family: str, vocab_size: int) -> ModelConfig:
    """Tiny shapes (dims multiples of 32) of each family llama.cpp runs."""
    if family == "gpt2":
        # transformers' GGUF loader maps neither gpt2.context_length to n_positions nor
        # feed_forward_length to n_inner, so only GPT-2's defaults (1024, 4 * dim) load there.
        return ModelConfig(vocab_size=vocab_size, context_length=1024, dim=64, num_layers=2,
                           num_heads=2, mlp="gelu", norm="layernorm", position="learned",
                           bias=True, tie_embeddings=True)  # fmt: skip
    if family == "mixtral":
        return tiny_llama(vocab_size, tied=False, ffn="moe", num_experts=4, experts_per_token=2)
    return tiny_llama(vocab_size, tied=family == "llama-tied")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """family -> (model, checkpoint dir), built once."""
    root = tmp_path_factory.mktemp("gguf-export")
    tokenizer = tiny_tokenizer()
    out = {}
    for family in ("llama-tied", "llama-untied", "gpt2", "mixtral"):
        model = random_model(_config(family, tokenizer.vocab_size))
        out[family] = (model, save_checkpoint(root / family, model, tokenizer, {"step": 0}))
    return out


def _tokens(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))


def _types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def _reference_logits(family: str, path, config: ModelConfig, state, tokens) -> torch.Tensor:
    """transformers' GGUF loader on the file; for Mixtral, which that loader does not read
    (transformers 5.24 maps no MoE `llama` file), MixtralForCausalLM holding the weights as
    lmforge dequantized them."""
    if family != "mixtral":
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        return model.eval()(tokens).logits
    hf_config = transformers.MixtralConfig(**hf_config_from_model_config(config))
    model = transformers.MixtralForCausalLM(hf_config).eval()
    model.load_state_dict(state_dict_to_hf(state, config))
    return model(tokens).logits


def _check_expert_layout(path, model, dtype: str) -> None:
    """llama.cpp's shapes (innermost first): gate/up_exps {dim, ffn, experts}, down_exps
    {ffn, dim, experts}, gate_inp {dim, experts}; read with gguf alone, not lmforge's reader."""
    config = model.config
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    E, C, h = config.num_experts, config.dim, config.expert_dim
    expected = {"gate_exps": [C, h, E], "up_exps": [C, h, E], "down_exps": [h, C, E]}
    expected["gate_inp"] = [C, E]
    for name, shape in expected.items():
        assert [int(d) for d in tensors[f"blk.1.ffn_{name}.weight"].shape] == shape, name
    tensor = tensors["blk.1.ffn_up_exps.weight"]
    up = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy())
    ours = model.layers[1].ffn.experts.up.detach()[:, h:]  # rows [gate; up]: the up half
    assert (up - ours).abs().max() <= WEIGHT_RTOL[dtype] * ours.abs().max()


@pytest.mark.parametrize("dtype", QUANTIZED)
@pytest.mark.parametrize("family", ["llama-tied", "llama-untied", "gpt2", "mixtral"])
def test_quantized_export_matches_transformers(tmp_path, checkpoints, family, dtype):
    model, checkpoint = checkpoints[family]
    path = export_gguf(checkpoint, tmp_path / f"{family}-{dtype}.gguf", dtype=dtype)
    types = _types(path)
    expected_arch = "gpt2" if family == "gpt2" else "llama"
    assert gguf.GGUFReader(path).fields["general.architecture"].contents() == expected_arch
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    matrix = "blk.0.ffn_gate_exps.weight" if family == "mixtral" else "blk.0.attn_output.weight"
    assert types[matrix] == dtype.upper()
    output = "token_embd.weight" if model.config.tie_embeddings else "output.weight"
    assert types[output] == ("Q8_0" if dtype.startswith("q4") else dtype.upper())
    if family == "gpt2":
        assert types["position_embd.weight"] == types["blk.0.attn_qkv.bias"] == "F32"
    if family == "mixtral":
        assert types["blk.0.ffn_gate_inp.weight"] == "F32"  # the router, as llama.cpp keeps it
        _check_expert_layout(path, model, dtype)

    config, state, _ = read_gguf(path)
    assert config.shape_dict() == model.config.shape_dict()
    tokens = _tokens(config.vocab_size)
    with torch.no_grad():
        ours = model_from_state(config, state)(tokens)
        theirs = _reference_logits(family, path, config, state, tokens)
    assert (ours - theirs).abs().max() <= 1e-4 * ours.abs().max()
    # Each weight moved by at most the type's rounding step (of a block's max |value|).
    for key, value in model.state_dict().items():
        assert (state[key] - value).abs().max() <= WEIGHT_RTOL[dtype] * value.abs().max(), key


def test_rows_off_the_block_size_fall_back_to_f16(tmp_path):
    tokenizer = tiny_tokenizer()
    model = random_model(tiny_llama(tokenizer.vocab_size, tied=True, ffn_dim=80))
    checkpoint = save_checkpoint(tmp_path / "ckpt", model, tokenizer, {"step": 0})
    types = _types(export_gguf(checkpoint, tmp_path / "m.gguf", dtype="q4_0"))
    assert types["blk.0.ffn_down.weight"] == "F16"  # rows of 80 values: not 32-value blocks
    assert types["blk.0.ffn_up.weight"] == types["blk.0.attn_q.weight"] == "Q4_0"  # rows of 64
