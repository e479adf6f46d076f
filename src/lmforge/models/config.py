"""The model config: one flat dataclass that describes every decoder lmforge builds.

Flat (no nested optional sections) so that every field is a plain `--model.x` flag and a plain
TOML key. GPT-2, Llama, Mistral, Mixtral and DeepSeek differ only in the values of these fields;
see `presets.py`. Heterogeneous stacks override a subset of the fields per layer (`layers`, resolved below into
one flat ModelConfig per layer; the resolution lives here because validation, shapes and to_dict
all need it).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmforge._validate import from_dict
from lmforge.errors import ConfigError
from lmforge.models.ranges import check_model_numbers


@dataclass
class ModelConfig:
    """Shape and flavour of a decoder-only transformer."""

    preset: str | None = None
    """Named starting point (see `lmforge presets`); the other keys given override it."""
    vocab_size: int | None = None
    """Embedding rows; None takes the tokenizer's vocab rounded up to a multiple of 64."""
    context_length: int = 256
    """Longest sequence the model attends over (and the learned-position table size)."""
    dim: int = 256
    """Residual stream width."""
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    """Key/value heads for grouped-query attention: num_heads is MHA, 1 is MQA, None means num_heads."""
    head_dim: int | None = None
    """Per-head width; None means dim // num_heads."""
    ffn_dim: int | None = None
    """Hidden width of the feed-forward block; None means 4*dim (gelu) or Llama's 8/3*dim rule (swiglu)."""
    ffn_multiple_of: int = 64
    """Llama rounds its derived SwiGLU width up to a multiple of this."""
    mlp: Literal["gelu", "swiglu"] = "swiglu"
    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    norm_eps: float = 1e-5
    position: Literal["rope", "learned", "sinusoidal", "alibi", "none"] = "rope"
    """rope, learned absolute, fixed sinusoidal (added to embeddings), ALiBi (attention bias), none (NoPE)."""
    rope_theta: float = 10000.0
    rope_scaling: Literal["none", "llama3", "yarn"] = "none"
    """Llama-3.1 or YaRN frequency scaling for long context."""
    rope_scaling_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context_length: int = 8192
    rope_yarn_beta_fast: float = 32.0
    rope_yarn_beta_slow: float = 1.0
    rope_yarn_mscale: float = 1.0
    rope_yarn_mscale_all_dim: float = 0.0
    """DeepSeek YaRN: cos/sin scale get_mscale(mscale)/get_mscale(mscale_all_dim); MLA's softmax
    scale is multiplied by get_mscale(mscale_all_dim)**2. 0 means plain YaRN (0.1 ln(factor) + 1)."""
    attention: Literal["gqa", "mla"] = "gqa"
    """gqa: grouped-query attention (MHA when num_kv_heads == num_heads, MQA when 1);
    mla: DeepSeek Multi-head Latent Attention (the mla_* / *_lora_rank fields)."""
    sliding_window: int | None = None
    """Mistral-style local attention: a token sees itself and the window-1 tokens before it."""
    q_lora_rank: int | None = None
    """MLA query compression rank; None projects queries directly (DeepSeek-V2-Lite)."""
    kv_lora_rank: int = 64
    """MLA key/value latent width: what the KV cache stores per token (plus qk_rope_head_dim)."""
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    """MLA: per-head query/key width without and with RoPE (the RoPE key is shared by all heads)."""
    v_head_dim: int = 32
    mla_absorb: bool = False
    """MLA inference: fold W_UK into the query and W_UV into the output, attending in latent space."""
    ffn: Literal["dense", "moe"] = "dense"
    num_experts: int = 8
    experts_per_token: int = 2
    """Routed experts per token (top-k)."""
    moe_ffn_dim: int | None = None
    """Hidden width of each expert; None means the dense hidden width."""
    num_shared_experts: int = 0
    """Always-on experts (DeepSeek), fused into one SwiGLU of num_shared_experts * moe_ffn_dim."""
    moe_scoring: Literal["softmax", "sigmoid"] = "softmax"
    moe_norm_topk: bool = True
    """Renormalise the top-k weights to sum to 1 (Mixtral, DeepSeek-V3)."""
    moe_routed_scale: float = 1.0
    """Multiply routed expert weights by this (DeepSeek routed_scaling_factor)."""
    moe_groups: int = 1
    moe_topk_groups: int = 1
    """Group-limited routing: experts split into moe_groups, tokens pick among the best
    moe_topk_groups groups (group score: max for softmax, sum of top-2 for sigmoid scoring)."""
    moe_aux_loss_coef: float = 0.0
    """Switch/GShard load-balancing loss weight (models.moe.moe_aux_loss); 0 is off."""
    moe_bias_balancing: bool = False
    """Auxiliary-loss-free balancing: a per-expert bias on the selection scores only."""
    moe_bias_update_rate: float = 1e-3
    """u in bias += u * sign(mean_load - load), applied by models.moe.update_router_biases."""
    moe_first_dense_layers: int = 0
    """The first this many layers keep a dense FFN when ffn = 'moe' (DeepSeek first_k_dense_replace)."""
    layers: list[dict] | str | None = None
    """Per-layer overrides: a list of one table per layer, or a .json/.jsonl file path (see LAYER_KEYS below)."""
    bias: bool = False
    """Biases on every linear layer and norm (GPT-2)."""
    qkv_bias: bool = False
    """Biases on the query/key/value projections only (Qwen2)."""
    tie_embeddings: bool = False
    """Share the token embedding with the LM head."""
    dropout: float = 0.0
    init_std: float = 0.02

    @property
    def rope_dim(self) -> int:
        """Width RoPE rotates: the shared rope key in MLA, the whole head otherwise."""
        return self.qk_rope_head_dim if self.attention == "mla" else self.attn_head_dim

    @property
    def expert_dim(self) -> int:
        return self.moe_ffn_dim or self.hidden_dim

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_dim:
            return self.ffn_dim
        if self.mlp == "gelu":
            return 4 * self.dim
        hidden = int(2 * (4 * self.dim) / 3)
        return self.ffn_multiple_of * -(-hidden // self.ffn_multiple_of)

    def validate(self) -> None:
        """Raise ConfigError for shapes that cannot build, before any tensor is allocated: every
        number against its range (models/ranges.py), then the rules that tie fields together."""
        check_model_numbers(self)
        layer_configs(self)  # checks every layer's resolved shape (validate_layer)

    def validate_layer(self, where: str = "model") -> None:
        """Checks of the per-layer fields (attention, FFN); `where` names the layer in messages."""
        if where != "model":  # a per-layer override; the model-wide values passed validate()
            check_model_numbers(self, where, LAYER_KEYS, "correct that entry of model.layers")
        if self.num_heads <= 0:
            raise ConfigError(f"{where}.num_heads must be positive, got {self.num_heads}")
        if self.head_dim is None and self.attention == "gqa" and self.dim % self.num_heads:
            raise ConfigError(
                f"{where}.num_heads={self.num_heads} does not divide model.dim={self.dim}; "
                f"pick a head count that divides the width (e.g. {_divisor_near(self.dim, self.num_heads)})"
            )
        if self.num_kv_heads is not None and (
            self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads
        ):
            raise ConfigError(
                f"{where}.num_kv_heads={self.num_kv_heads} must be positive and divide "
                f"num_heads={self.num_heads}"
            )
        if self.position == "rope" and self.rope_dim % 2:
            raise ConfigError(f"RoPE needs an even head_dim, got {self.rope_dim} ({where})")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"{where}.sliding_window must be positive or unset")
        if self.attention == "mla":
            ranks = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
            for name in ranks + ("q_lora_rank",) * (self.q_lora_rank is not None):
                if getattr(self, name) <= 0:
                    raise ConfigError(
                        f"{where}.{name} must be positive for MLA, got {getattr(self, name)}"
                    )
            if self.kv_lora_rank >= self.num_heads * (self.qk_nope_head_dim + self.v_head_dim):
                raise ConfigError(
                    f"{where}.kv_lora_rank={self.kv_lora_rank} compresses nothing: it must be smaller "
                    f"than num_heads * (qk_nope_head_dim + v_head_dim) = "
                    f"{self.num_heads * (self.qk_nope_head_dim + self.v_head_dim)}"
                )
            if self.q_lora_rank is not None and self.q_lora_rank >= self.dim:
                raise ConfigError(
                    f"{where}.q_lora_rank={self.q_lora_rank} must be smaller than model.dim={self.dim} "
                    "(or unset for a plain query projection)"
                )
        if self.ffn == "moe":
            if self.num_experts <= 0 or self.experts_per_token <= 0:
                raise ConfigError(f"{where}.num_experts and experts_per_token must be positive")
            if self.experts_per_token > self.num_experts:
                raise ConfigError(
                    f"{where}.experts_per_token={self.experts_per_token} exceeds num_experts="
                    f"{self.num_experts}; pick at most {self.num_experts}"
                )
            groups, topk_groups = self.moe_groups, self.moe_topk_groups
            if groups <= 0 or self.num_experts % groups or not 0 < topk_groups <= groups:
                raise ConfigError(
                    f"{where}.moe_groups={groups} must divide num_experts={self.num_experts} and "
                    f"moe_topk_groups={topk_groups} must be in [1, moe_groups]"
                )
            if self.experts_per_token > topk_groups * (self.num_experts // groups):
                raise ConfigError(
                    f"{where}.experts_per_token={self.experts_per_token} exceeds the experts in "
                    f"moe_topk_groups={topk_groups} groups; raise moe_topk_groups"
                )

    def shape_dict(self) -> dict:
        """The fields that determine parameter shapes (for resume/init compatibility checks)."""
        keys = ("vocab_size", "dim", "num_layers", "num_heads", "kv_heads", "attn_head_dim")
        shape = {k: getattr(self, k) for k in keys}
        shape |= {"hidden_dim": self.hidden_dim, "mlp": self.mlp, "norm": self.norm}
        shape |= {"position": self.position, "bias": self.bias, "qkv_bias": self.qkv_bias}
        shape |= {"tie_embeddings": self.tie_embeddings}
        if self.position == "learned":
            shape["context_length"] = self.context_length
        if self.layers or self.attention == "mla" or self.ffn == "moe":
            shape["layer_shapes"] = layer_shapes(self)
        return shape

    def to_dict(self) -> dict:
        """Plain dict; a `layers` file path is inlined so a checkpoint's config.json is self-contained."""
        data = dataclasses.asdict(self)
        if isinstance(self.layers, str):
            data["layers"] = layer_overrides(self)
        return data


def _divisor_near(width: int, heads: int) -> int:
    divisors = [d for d in range(1, width + 1) if width % d == 0]
    return min(divisors, key=lambda d: abs(d - heads))


# Heterogeneous stacks: resolve `ModelConfig.layers` into one flat ModelConfig per layer.
#
# `layers` is either an inline list (a TOML array of tables, one per layer) or the path of a .json
# file (a list) or .jsonl file (one object per line). Each object overrides only the per-layer keys
# below; `{}` keeps the model-wide values. `attention` also accepts "mha" (num_kv_heads = num_heads)
# and "mqa" (num_kv_heads = 1) as shorthands for "gqa" with that head count.
#
#     [model]
#     layers = [{attention = "mla"}, {ffn = "moe", num_experts = 4}, {sliding_window = 64}, {}]

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
