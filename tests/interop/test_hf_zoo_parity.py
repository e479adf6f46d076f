"""HF parity for the architecture zoo (hf_fixtures.ZOO_CASES): DeepSeek-V2 (MLA + MoE, shared
experts, group-limited routing), DeepSeek-V3 (sigmoid router with bias correction, q compression,
YaRN, dense first layer), Mixtral (top-2 MoE) and Mistral with a window shorter than the sequence.

Tiny random transformers models are converted with lmforge.formats (hf_config, hf_weights); logits
must agree to 1e-4, greedy decoding (our KV cache vs theirs) must agree, and exporting back must
reproduce the HF state dict (or, for V3, which we export without interleaved RoPE, the same logits).
"""

from __future__ import annotations

import pytest
import torch
from hf_fixtures import (
    ZOO_CASES,
    assert_exports_back,
    hf_greedy,
    hf_model,
    random_tokens,
    to_hf,
    to_lmforge,
)

from lmforge.formats.hf_config import model_config_from_hf
from lmforge.formats.hf_weights import state_dict_from_hf
from lmforge.inference.generate import SamplingConfig, generate
from lmforge.models.moe import MoEFeedForward


@pytest.mark.parametrize("case", ZOO_CASES)
@torch.no_grad()
def test_zoo_logits_match_transformers(case):
    reference = hf_model(case)
    model = to_lmforge(reference)
    tokens = random_tokens()
    ours, theirs = model(tokens), reference(tokens).logits
    assert theirs.abs().max() > 1.0  # not a vacuous comparison
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_imported_structure_is_the_intended_one():
    v3 = to_lmforge(hf_model("deepseek-v3"))
    kinds = [type(layer.ffn).__name__ for layer in v3.layers]
    assert kinds == ["FeedForward", "MoEFeedForward", "MoEFeedForward"]
    assert all(type(layer.attn).__name__ == "LatentAttention" for layer in v3.layers)
    router = v3.layers[1].ffn.router
    assert router.config.moe_scoring == "sigmoid" and router.selection_bias.abs().sum() > 0
    window = to_lmforge(hf_model("mistral-window"))
    assert window.config.sliding_window == 6


@pytest.mark.parametrize("case", ZOO_CASES)
def test_zoo_greedy_generation_matches_transformers(case):
    reference = hf_model(case)
    model = to_lmforge(reference)
    prompt = random_tokens(1, 8)[0].tolist()
    ours = generate(model, [prompt], SamplingConfig(max_new_tokens=8, temperature=0.0))
    assert ours == hf_greedy(reference, [prompt], 8)


@pytest.mark.parametrize("case", ["deepseek-v2", "mixtral", "mistral-window"])
def test_zoo_round_trip_gives_back_the_hf_state_dict(case):
    reference = hf_model(case)
    assert_exports_back(reference, to_lmforge(reference))


@pytest.mark.parametrize("case", ZOO_CASES)
@torch.no_grad()
def test_zoo_export_loads_in_transformers_with_the_same_logits(case):
    model = to_lmforge(hf_model(case))
    exported = to_hf(model)  # which checks that every HF weight is given, none left over
    tokens = random_tokens()
    assert (exported(tokens).logits - model(tokens)).abs().max().item() <= 1e-4


def test_hub_per_expert_keys_are_stacked_on_import():
    mixtral = hf_model("mixtral")
    state = mixtral.state_dict()
    legacy = {}
    for key, tensor in state.items():
        if key.endswith("experts.gate_up_proj"):
            layer = key.removesuffix(".mlp.experts.gate_up_proj")
            for e, fused in enumerate(tensor):
                gate, up = fused.chunk(2)
                legacy[f"{layer}.block_sparse_moe.experts.{e}.w1.weight"] = gate
                legacy[f"{layer}.block_sparse_moe.experts.{e}.w3.weight"] = up
        elif key.endswith("experts.down_proj"):
            layer = key.removesuffix(".mlp.experts.down_proj")
            for e, down in enumerate(tensor):
                legacy[f"{layer}.block_sparse_moe.experts.{e}.w2.weight"] = down
        else:
            legacy[key.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = tensor
    config = model_config_from_hf(mixtral.config.to_dict())
    ours = state_dict_from_hf(legacy, config, "mixtral")
    reference = to_lmforge(mixtral).state_dict()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert isinstance(to_lmforge(mixtral).layers[0].ffn, MoEFeedForward)
