"""LoRA: few trainable parameters, merged == unmerged, adapter-only checkpoints, target errors."""

from __future__ import annotations

import pytest
import torch
from conftest import build, tiny_model

from lmforge.config import LoraConfig
from lmforge.errors import ConfigError
from lmforge.models.counting import build_on_meta
from lmforge.models.lora import (
    LoRALinear,
    adapter_state,
    adapters_disabled,
    apply_lora,
    merge_lora,
    target_modules,
    trainable_parameters,
)
from lmforge.models.presets import model_preset


def randomize_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("lora_a", "lora_b")):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def test_rank_8_trains_under_one_percent_of_smollm2():
    model = build_on_meta(model_preset("smollm2-135m", vocab_size=49152))
    total = sum(p.numel() for p in model.parameters())
    names = apply_lora(model, LoraConfig(enabled=True, rank=8))
    assert len(names) == 2 * 30  # attn.qkv and attn.out of 30 layers
    trainable = trainable_parameters(model)
    # r * (in + out) per layer: qkv 8 * (576 + 960), out 8 * (576 + 576).
    assert trainable == 30 * 8 * ((576 + 960) + (576 + 576))
    assert trainable / total < 0.01, trainable / total


def test_targets_by_suffix_glob_and_regex():
    model = build(tiny_model(num_layers=2))
    assert target_modules(model, ("ffn.down",)) == ["layers.0.ffn.down", "layers.1.ffn.down"]
    assert target_modules(model, ("layers.1.attn.*",)) == ["layers.1.attn.qkv", "layers.1.attn.out"]
    assert target_modules(model, ("re:layers\\.0\\..*(qkv|up)$",)) == [
        "layers.0.attn.qkv",
        "layers.0.ffn.up",
    ]
    with pytest.raises(ConfigError, match="'attn.q_proj' matches no linear layer.*attn.qkv"):
        target_modules(model, ("attn.q_proj",))


def test_starts_as_the_base_and_merged_equals_unmerged():
    model = build(tiny_model(num_layers=2))
    tokens = torch.randint(0, 97, (2, 16))
    base_logits = model(tokens)
    apply_lora(
        model, LoraConfig(enabled=True, targets=("attn.qkv", "attn.out", "ffn.up", "ffn.down"))
    )
    torch.testing.assert_close(model(tokens), base_logits, rtol=0, atol=0)  # B starts at 0
    only = {n for n, p in model.named_parameters() if p.requires_grad}
    assert only and all(n.endswith(("lora_a", "lora_b")) for n in only)
    randomize_adapters(model)
    adapted = model(tokens)
    assert (adapted - base_logits).abs().max() > 1e-2
    with adapters_disabled(model):
        torch.testing.assert_close(model(tokens), base_logits, rtol=0, atol=0)
    base_names = set(build(tiny_model(num_layers=2)).state_dict())
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == base_names
    torch.testing.assert_close(model(tokens), adapted, rtol=1e-5, atol=1e-5)


def test_adapter_state_is_a_small_fraction():
    model = build_on_meta(model_preset("smollm2-135m", vocab_size=49152))
    full = sum(p.numel() for p in model.state_dict().values())
    apply_lora(model, LoraConfig(enabled=True))
    adapters = sum(t.numel() for t in adapter_state(model).values())
    assert adapters / full < 0.01
