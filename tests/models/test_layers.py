"""Heterogeneous stacks: per-layer overrides from TOML or JSONL build exactly the intended layers,
train, serialise self-contained, and reject unknown keys or the wrong layer count."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import build, tiny_model
from zoo_fixtures import cached_logits

from lmforge.config import config_from_dict
from lmforge.errors import ConfigError
from lmforge.models.attention import Attention, LatentAttention
from lmforge.models.config import ModelConfig
from lmforge.models.counting import active_parameters, build_on_meta, count_parameters
from lmforge.models.ffn import FeedForward
from lmforge.models.moe import MoEFeedForward, moe_aux_loss, update_router_biases

V = 97
LAYERS = [
    {"attention": "mla", "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8},
    {"attention": "mqa", "ffn": "moe", "num_experts": 4, "experts_per_token": 1},
    {"sliding_window": 4, "ffn": "moe", "moe_scoring": "sigmoid", "moe_bias_balancing": True},
    {"attention": "mha", "ffn_dim": 48},
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_jsonl_builds_exactly_the_intended_layers(tmp_path):
    config = tiny_model(
        vocab_size=V, num_layers=4, layers=write_jsonl(tmp_path / "l.jsonl", LAYERS)
    )
    model = build(config)
    attn = [type(layer.attn) for layer in model.layers]
    ffn = [type(layer.ffn) for layer in model.layers]
    assert attn == [LatentAttention, Attention, Attention, Attention]
    assert ffn == [FeedForward, MoEFeedForward, MoEFeedForward, FeedForward]
    assert model.layers[0].attn.kv_up.in_features == 16
    assert [layer.attn.num_kv_heads for layer in model.layers[1:]] == [1, 2, 4]
    assert (
        model.layers[1].ffn.experts.up.shape[0] == 4
        and model.layers[2].ffn.experts.up.shape[0] == 8
    )
    assert (
        model.layers[2].attn.config.sliding_window == 4
        and model.layers[3].ffn.down.in_features == 48
    )
    assert count_parameters(model) > active_parameters(model)
    assert count_parameters(build_on_meta(config)) == count_parameters(model)
    tokens = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            cached_logits(model, tokens, 5), model(tokens), atol=1e-5, rtol=1e-4
        )


def test_heterogeneous_stack_trains(tmp_path):
    config = tiny_model(
        vocab_size=V,
        num_layers=4,
        layers=write_jsonl(tmp_path / "l.jsonl", LAYERS),
        moe_aux_loss_coef=0.01,
    )
    torch.manual_seed(0)
    model = build(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, V, (8, 33), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(40):
        logits = model(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), data[:, 1:].reshape(-1))
        optimizer.zero_grad()
        (loss + moe_aux_loss(model)).backward()
        optimizer.step()
        update_router_biases(model)
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses[::8]
    assert model.layers[2].ffn.router.selection_bias.abs().sum() > 0


def test_toml_inline_list_and_self_contained_to_dict(tmp_path):
    run = config_from_dict({"model": {"preset": "tiny-llama", "num_layers": 4, "layers": LAYERS}})
    assert run.model.layers == LAYERS
    from_file = tiny_model(
        vocab_size=V, num_layers=4, layers=write_jsonl(tmp_path / "x.jsonl", LAYERS)
    )
    data = from_file.to_dict()
    assert data["layers"] == LAYERS  # the path is inlined, so checkpoints need no side file
    again = ModelConfig(**data)
    assert again.shape_dict() == from_file.shape_dict()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{}, {"atention": "mla"}, {}, {}],
            r"model.layers\[1\] \(.*line 2\): unknown key 'atention'; did you mean 'attention'",
        ),
        ([{}, {}, {}], "model.layers has 3 entries but model.num_layers=4"),
        (
            [{}, {}, {"ffn": "moe", "experts_per_token": 9}, {}],
            r"model.layers\[2\].experts_per_token=9 exceeds",
        ),
        (
            [{}, {}, {}, {"num_kv_heads": 3}],
            r"model.layers\[3\].num_kv_heads=3 must be positive and divide",
        ),
        ([{}, {"ffn": "sparse"}, {}, {}], "'sparse' is not one of"),
    ],
)
def test_bad_layer_configs_raise_config_error(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError, match=message):
        tiny_model(vocab_size=V, num_layers=4, layers=path).validate()


def test_missing_layer_file_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model.layers file .* does not exist"):
        tiny_model(vocab_size=V, layers=str(tmp_path / "nope.jsonl")).validate()
