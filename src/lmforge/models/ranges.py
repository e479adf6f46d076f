"""The range of every number of a model config, and the checks of a model read from a file.

MODEL_RANGES is part of the run config's range table (config_checks.RANGES merges it), so
`--model.ffn_dim -1` on the command line and `"ffn_dim": -384` in a checkpoint's config.json, an
HF config.json, a Meta params.json or GGUF metadata all meet the same rule. The upper ends refuse
absurd sizes before anything is built: a billion layers would take hours just to construct on the
meta device. Sizes below them can still describe a model too big for the machine; that is
models/footprint.py's check, which needs the parameter count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lmforge._validate import (
    BETA,
    NON_NEGATIVE,
    POSITIVE,
    Rule,
    between,
    check_number,
    check_types,
)
from lmforge.errors import ConfigError

# Far above any published model (Llama 3.1 405B: 126 layers, width 16,384, 128 heads; DeepSeek-V3:
# 256 experts; Gemma: 256k vocab; 10M-token contexts), so no real model is refused by them.
MAX_LAYERS = 2048  # each layer is a few modules: constructing 2,048 takes about a second
MAX_WIDTH = 2**24
MAX_VOCAB = 2**24
MAX_HEADS = 2**16
MAX_EXPERTS = 2**16
MAX_POSITIONS = 2**31 - 1

WIDTH = between(1, MAX_WIDTH)
POSITIONS = between(1, MAX_POSITIONS)
# rope_theta 1 makes every pair rotate at one speed, and YaRN divides by log(theta)
ROPE_BASE: Rule = (lambda v: v > 1, "must be > 1")

MODEL_RANGES: dict[str, Rule] = {
    "model.vocab_size": between(1, MAX_VOCAB),
    "model.context_length": POSITIONS,
    "model.dim": WIDTH,
    "model.num_layers": between(1, MAX_LAYERS),
    "model.num_heads": between(1, MAX_HEADS),
    "model.num_kv_heads": between(1, MAX_HEADS),
    "model.head_dim": WIDTH,
    "model.ffn_dim": WIDTH,
    "model.ffn_multiple_of": WIDTH,
    "model.norm_eps": NON_NEGATIVE,
    "model.rope_theta": ROPE_BASE,
    "model.rope_scaling_factor": POSITIVE,
    "model.rope_low_freq_factor": POSITIVE,
    "model.rope_high_freq_factor": POSITIVE,
    "model.rope_original_context_length": POSITIONS,
    "model.rope_yarn_beta_fast": POSITIVE,
    "model.rope_yarn_beta_slow": POSITIVE,
    "model.rope_yarn_mscale": NON_NEGATIVE,
    "model.rope_yarn_mscale_all_dim": NON_NEGATIVE,
    "model.sliding_window": POSITIONS,
    "model.q_lora_rank": WIDTH,
    "model.kv_lora_rank": WIDTH,
    "model.qk_nope_head_dim": WIDTH,
    "model.qk_rope_head_dim": WIDTH,
    "model.v_head_dim": WIDTH,
    "model.num_experts": between(1, MAX_EXPERTS),
    "model.experts_per_token": between(1, MAX_EXPERTS),
    "model.moe_ffn_dim": WIDTH,
    "model.num_shared_experts": between(0, MAX_EXPERTS),
    "model.moe_routed_scale": POSITIVE,
    "model.moe_groups": between(1, MAX_EXPERTS),
    "model.moe_topk_groups": between(1, MAX_EXPERTS),
    "model.moe_aux_loss_coef": NON_NEGATIVE,
    "model.moe_bias_update_rate": NON_NEGATIVE,
    "model.moe_first_dense_layers": between(0, MAX_LAYERS),
    "model.dropout": BETA,
    "model.init_std": NON_NEGATIVE,
}

FILE_FIX = "the file is damaged or was edited: correct it, or use another model"


def check_model_numbers(
    config: Any, where: str = "model", fields: Iterable[str] | None = None, fix: str | None = None
) -> None:
    """Every field of MODEL_RANGES that `config` has (or only `fields`), named `where.field`."""
    wanted = None if fields is None else set(fields)
    for key, rule in MODEL_RANGES.items():
        name = key.removeprefix("model.")
        if (wanted is None or name in wanted) and hasattr(config, name):
            check_number(f"{where}.{name}", getattr(config, name), rule, fix)


def _dig(data: Mapping, dotted: str) -> tuple[bool, Any]:
    if dotted in data:  # GGUF keys are flat strings with dots in them
        return True, data[dotted]
    for part in dotted.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return False, None
        data = data[part]
    return True, data


def check_source_numbers(data: Mapping, names: Mapping[str, str], source: str) -> None:
    """Another format's numbers (HF config.json, Meta params.json, GGUF metadata) against the
    rules of the fields they become, before any arithmetic on them: `names` maps their name
    (dotted for nested tables) to ours. A null is left to the importer (it means "default")."""
    for theirs, ours in names.items():
        present, value = _dig(data, theirs)
        if not present or value is None:
            continue
        label = f"{source}: {theirs} (model.{ours})"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{label} must be a number, got {value!r}; {FILE_FIX}")
        check_number(label, value, MODEL_RANGES[f"model.{ours}"], FILE_FIX)


def check_model_file(config: Any, source: str) -> None:
    """A model config read from `source` (a file of any format): field types, then the range
    table, then the shape rules of validate(); every refusal names the file, in one line."""
    check_types(config, source, "model.")
    try:
        check_model_numbers(config, fix=FILE_FIX)
        config.validate()
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
