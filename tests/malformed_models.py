"""Builders of malformed model files for the model-file tests (test_model_file_checks.py and
test_model_file_formats.py): every numeric model field, the bad values of its class, and the same
field under its name in each format (lmforge config.json, HF config.json, GGUF metadata, Meta
params.json). The expectations are written out here, by hand, rather than read from
lmforge.models.ranges: a rule dropped from the range table must fail these tests. Also the small
valid checkpoints they and test_output_paths.py start from (plain, LoRA, sharded)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import typing
from pathlib import Path

import gguf
import numpy as np

from lmforge.checkpoint.adapters import adapter_writer
from lmforge.checkpoint.directory import save_checkpoint, write_manifest
from lmforge.config import LoraConfig
from lmforge.formats.hf_config import hf_config_from_model_config
from lmforge.models.config import ModelConfig
from lmforge.models.lora import apply_lora
from lmforge.models.presets import model_preset
from lmforge.models.transformer import Transformer
from lmforge.tokenizer import ByteTokenizer, HuggingFaceTokenizer

NAN, INF = float("nan"), float("inf")
HUGE = 2**40  # beyond every size cap, and beyond any machine as a width

# The bad values of each class of field, as they can be written into a JSON file.
SIZE = [NAN, INF, -1, 0, HUGE, 1.5]  # an int >= 1 (NaN, inf, 1.5: not an int at all)
COUNT = [NAN, -1, HUGE]  # an int >= 0
POSITIVE = [NAN, INF, -INF, -1.0, 0.0]
NON_NEGATIVE = [NAN, INF, -1.0]
FIELD_VALUES: dict[str, list] = {
    **dict.fromkeys(
        [
            "vocab_size",
            "context_length",
            "dim",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "ffn_dim",
            "ffn_multiple_of",
            "rope_original_context_length",
            "sliding_window",
            "q_lora_rank",
            "kv_lora_rank",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "v_head_dim",
            "num_experts",
            "experts_per_token",
            "moe_ffn_dim",
            "moe_groups",
            "moe_topk_groups",
        ],
        SIZE,
    ),
    **dict.fromkeys(("num_shared_experts", "moe_first_dense_layers"), COUNT),
    **dict.fromkeys(
        [
            "rope_scaling_factor",
            "rope_low_freq_factor",
            "rope_high_freq_factor",
            "rope_yarn_beta_fast",
            "rope_yarn_beta_slow",
            "moe_routed_scale",
        ],
        POSITIVE,
    ),
    **dict.fromkeys(
        [
            "norm_eps",
            "rope_yarn_mscale",
            "rope_yarn_mscale_all_dim",
            "moe_aux_loss_coef",
            "moe_bias_update_rate",
            "init_std",
        ],
        NON_NEGATIVE,
    ),
    "rope_theta": [NAN, INF, -1.0, 0.0, 1.0],  # 1: every pair at one speed (YaRN divides by log)
    "dropout": [NAN, -0.5, 1.0, 1e30],
}


def numeric_fields() -> list[str]:
    """Every int or float field of ModelConfig (bools excluded), read off the dataclass."""
    hints = typing.get_type_hints(ModelConfig)
    return [
        f.name
        for f in dataclasses.fields(ModelConfig)
        if {int, float} & {hints[f.name], *typing.get_args(hints[f.name])}
    ]


def value_id(value) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else repr(value)


def grid(table: dict[str, list]) -> list[tuple[str, object]]:
    return [(field, value) for field, values in table.items() for value in values]


# --- lmforge checkpoints -------------------------------------------------------------------------

BASE = model_preset("tiny-llama", vocab_size=ByteTokenizer().vocab_size)


def base_checkpoint(directory: Path) -> Path:
    """A tiny valid checkpoint (random weights, byte tokenizer)."""
    return save_checkpoint(directory, Transformer(BASE).eval(), ByteTokenizer(), {"step": 0})


def bpe_checkpoint(directory: Path) -> Path:
    """A tiny valid checkpoint with a byte-level BPE tokenizer (what GGUF export takes)."""
    from conftest import make_text

    tokenizer = HuggingFaceTokenizer.train([make_text(5, 60)], vocab_size=300)
    config = dataclasses.replace(BASE, vocab_size=tokenizer.vocab_size)
    return save_checkpoint(directory, Transformer(config).eval(), tokenizer, {"step": 0})


def lora_checkpoint(base: Path, directory: Path) -> Path:
    """A LoRA run's checkpoint of `base`: its config and tokenizer, rank-2 adapters in place of
    the weights, and the base's path in adapter_config.json."""
    lora = LoraConfig(enabled=True, rank=2)
    model = Transformer(BASE)
    apply_lora(model, lora)
    directory.mkdir(parents=True)
    for name in ("config.json", "lmforge_tokenizer.json", "checkpoint.json"):
        shutil.copy(base / name, directory / name)
    adapter_writer(lora, str(base))(directory, model)
    return directory


def sharded_checkpoint(base: Path, directory: Path) -> Path:
    """A copy of `base` whose model is (also) held as a DCP sharded state, as an FSDP run saves
    it: what `lmforge consolidate` reads. The manifest vouches for it."""
    import safetensors.torch
    import torch.distributed.checkpoint as dcp

    shutil.copytree(base, directory)
    state = safetensors.torch.load_file(str(directory / "model.safetensors"))
    dcp.save({"model": state}, checkpoint_id=str(directory / "sharded_state"), no_dist=True)
    write_manifest(directory)
    return directory


def checkpoint_with(base: Path, directory: Path, **changes) -> Path:
    """A checkpoint sharing `base`'s files (symlinks) whose config.json has `changes`, and no
    manifest (a hand-edited checkpoint: nothing vouches for the config)."""
    directory.mkdir(parents=True)
    for path in base.iterdir():
        if path.name not in ("config.json", "manifest.json"):
            os.symlink(path, directory / path.name)
    config = json.loads((base / "config.json").read_text()) | changes
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# --- Hugging Face config.json --------------------------------------------------------------------


def _hf_base(preset: str, **overrides) -> dict:
    return hf_config_from_model_config(model_preset(preset, vocab_size=320, **overrides))


HF_BASES = {
    "gpt2": lambda: _hf_base("tiny-gpt2"),
    "llama": lambda: _hf_base("tiny-llama"),
    "llama3": lambda: _hf_base(
        "tiny-llama", rope_scaling="llama3", rope_original_context_length=64
    ),
    "mistral": lambda: _hf_base("tiny-llama", sliding_window=32),
    "mixtral": lambda: _hf_base("tiny-mixtral"),
    "deepseek_v3": lambda: _hf_base(
        "tiny-deepseek", moe_scoring="sigmoid", moe_norm_topk=True, moe_bias_balancing=True
    ),
}
# family: {HF name (dotted: inside a table): the ModelConfig field it becomes}
HF_FIELDS = {
    "gpt2": dict(
        vocab_size="vocab_size",
        n_positions="context_length",
        n_embd="dim",
        n_layer="num_layers",
        n_head="num_heads",
        n_inner="ffn_dim",
        layer_norm_epsilon="norm_eps",
        initializer_range="init_std",
    ),
    "llama": dict(
        vocab_size="vocab_size",
        max_position_embeddings="context_length",
        hidden_size="dim",
        num_hidden_layers="num_layers",
        num_attention_heads="num_heads",
        num_key_value_heads="num_kv_heads",
        head_dim="head_dim",
        intermediate_size="ffn_dim",
        rms_norm_eps="norm_eps",
        rope_theta="rope_theta",
    ),
    "llama3": {
        "rope_scaling.factor": "rope_scaling_factor",
        "rope_scaling.low_freq_factor": "rope_low_freq_factor",
        "rope_scaling.high_freq_factor": "rope_high_freq_factor",
        "rope_scaling.original_max_position_embeddings": "rope_original_context_length",
    },
    "mistral": dict(sliding_window="sliding_window"),
    "mixtral": dict(num_local_experts="num_experts", num_experts_per_tok="experts_per_token"),
    "deepseek_v3": dict(
        kv_lora_rank="kv_lora_rank",
        q_lora_rank="q_lora_rank",
        qk_nope_head_dim="qk_nope_head_dim",
        qk_rope_head_dim="qk_rope_head_dim",
        v_head_dim="v_head_dim",
        n_routed_experts="num_experts",
        moe_intermediate_size="moe_ffn_dim",
        n_shared_experts="num_shared_experts",
        routed_scaling_factor="moe_routed_scale",
        n_group="moe_groups",
        topk_group="moe_topk_groups",
        first_k_dense_replace="moe_first_dense_layers",
    ),
}
HF_GRID = [
    (family, hf_name, value)
    for family, names in HF_FIELDS.items()
    for hf_name, ours in names.items()
    for value in FIELD_VALUES[ours]
    if value != 1.5  # a float where HF means an int is caught by the type check, named ours
]


def hf_config_with(family: str, dotted: str, value) -> dict:
    config = HF_BASES[family]()
    table = config
    *parents, leaf = dotted.split(".")
    for parent in parents:
        table = table[parent]
    table[leaf] = value
    if dotted.startswith("rope_scaling."):  # transformers 5's copy would win otherwise
        config["rope_parameters"] = dict(config["rope_scaling"], rope_theta=config["rope_theta"])
    return config


def hf_dir_with(directory: Path, config: dict) -> Path:
    """An HF directory holding only config.json: every reader checks it before anything else."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# --- GGUF metadata and Meta params.json ----------------------------------------------------------

GGUF_BASE = {
    "llama.embedding_length": 64,
    "llama.block_count": 2,
    "llama.context_length": 128,
    "llama.feed_forward_length": 128,
    "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
    "llama.rope.freq_base": 10000.0,
}


def gguf_file(path: Path, metadata: dict, vocab: int = 256) -> Path:
    """A GGUF file with `metadata` and only a token embedding (what the config is read from)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in metadata.items():
        if isinstance(value, float):
            writer.add_float32(key, value)
        elif value < 0:
            writer.add_int32(key, value)
        elif value >= 2**32:
            writer.add_uint64(key, value)
        else:
            writer.add_uint32(key, value)
    writer.add_tensor("token_embd.weight", np.zeros((vocab, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


META_BASE = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32)
META_BASE |= dict(norm_eps=1e-5, rope_theta=10000.0)


def meta_dir(directory: Path, params: dict) -> Path:
    """A Meta directory whose params.json is read first; the shard is empty (never reached)."""
    directory.mkdir(parents=True)
    (directory / "params.json").write_text(json.dumps(params))
    (directory / "consolidated.00.pth").write_bytes(b"")
    return directory
