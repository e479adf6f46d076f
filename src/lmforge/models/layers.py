"""Heterogeneous stacks: resolve `ModelConfig.layers` into one flat ModelConfig per layer.

`layers` is either an inline list (a TOML array of tables, one per layer) or the path of a .json
file (a list) or .jsonl file (one object per line). Each object overrides only the per-layer keys
below; `{}` keeps the model-wide values. `attention` also accepts "mha" (num_kv_heads = num_heads)
and "mqa" (num_kv_heads = 1) as shorthands for "gqa" with that head count.

    [model]
    layers = [{attention = "mla"}, {ffn = "moe", num_experts = 4}, {sliding_window = 64}, {}]
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path

from lmforge._validate import from_dict
from lmforge.errors import ConfigError
from lmforge.models.config import ModelConfig

LAYER_KEYS = (
    "attention",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "sliding_window",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "ffn",
    "ffn_dim",
    "num_experts",
    "experts_per_token",
    "moe_ffn_dim",
    "num_shared_experts",
    "moe_scoring",
    "moe_norm_topk",
    "moe_routed_scale",
    "moe_groups",
    "moe_topk_groups",
    "moe_bias_balancing",
)


def _read_layer_file(path: str) -> tuple[list, list[str]]:
    """The objects of a .json / .jsonl file and a 'file line N' label for each."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"model.layers file {path} does not exist; give a .json or .jsonl path")
    text = file.read_text()
    if file.suffix == ".jsonl":
        items, labels = [], []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ConfigError(
                    f"model.layers: {path} line {number} is not JSON ({error})"
                ) from None
            labels.append(f"{path} line {number}")
        return items, labels
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"model.layers: {path} is not JSON ({error})") from None
    if not isinstance(items, list):
        raise ConfigError(f"model.layers: {path} must hold a JSON list with one object per layer")
    return items, [f"{path} item {i}" for i in range(len(items))]


def layer_overrides(config: ModelConfig) -> list[dict] | None:
    """The per-layer override dicts (checked for keys and count), or None for a uniform stack."""
    if config.layers is None:
        return None
    if isinstance(config.layers, str):
        items, labels = _read_layer_file(config.layers)
    elif isinstance(config.layers, list):
        items, labels = config.layers, [f"entry {i}" for i in range(len(config.layers))]
    else:
        raise ConfigError("model.layers must be a list of tables or a .json/.jsonl path")
    if len(items) != config.num_layers:
        raise ConfigError(
            f"model.layers has {len(items)} entries but model.num_layers={config.num_layers}; "
            "give exactly one object per layer"
        )
    for i, (item, label) in enumerate(zip(items, labels, strict=True)):
        if not isinstance(item, dict):
            raise ConfigError(f"model.layers[{i}] ({label}) must be an object, got {item!r}")
        for key in item:
            if key not in LAYER_KEYS:
                close = difflib.get_close_matches(key, LAYER_KEYS, n=1)
                hint = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else f"per-layer keys: {', '.join(LAYER_KEYS)}"
                )
                raise ConfigError(f"model.layers[{i}] ({label}): unknown key '{key}'; {hint}")
    return [dict(item) for item in items]


def layer_configs(config: ModelConfig) -> list[ModelConfig]:
    """One validated flat ModelConfig per layer, overrides applied."""
    overrides = layer_overrides(config)
    base = dataclasses.asdict(config) | {"layers": None, "moe_first_dense_layers": 0}
    resolved = []
    for i in range(config.num_layers):
        fields = dict(overrides[i]) if overrides else {}
        where = f"model.layers[{i}]" if overrides else "model"
        shorthand = fields.get("attention")
        if shorthand in ("mha", "mqa"):
            heads = fields.get("num_heads", config.num_heads)
            fields |= {"attention": "gqa", "num_kv_heads": heads if shorthand == "mha" else 1}
        if i < config.moe_first_dense_layers and "ffn" not in fields:
            fields["ffn"] = "dense"
        layer = from_dict(ModelConfig, base | fields, where, f"{where}.")
        layer.validate_layer(where)
        resolved.append(layer)
    return resolved


def layer_shapes(config: ModelConfig) -> list[dict]:
    """Per-layer shape-determining fields, for resume compatibility checks."""
    keys = ("attention", "num_heads", "kv_heads", "attn_head_dim", "ffn", "hidden_dim")
    mla = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    moe = ("num_experts", "expert_dim", "num_shared_experts", "moe_bias_balancing")
    shapes = []
    for layer in layer_configs(config):
        names = (
            keys + (mla if layer.attention == "mla" else ()) + (moe if layer.ffn == "moe" else ())
        )
        shapes.append({name: getattr(layer, name) for name in names})
    return shapes
