"""The model-file checks in the other formats: GGUF metadata and Meta params.json go through the
same range table as lmforge's and HF's config.json (test_model_file_checks.py), before any tensor
is read; a LoRA checkpoint's adapter config and adapter weights are checked before `merge` writes
anything. Each bad file: one line naming it, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
from bad_input_builders import snapshot
from conftest import assert_one_line_error
from malformed_models import (
    GGUF_BASE,
    HUGE,
    META_BASE,
    NAN,
    base_checkpoint,
    gguf_file,
    meta_dir,
    value_id,
)
from malformed_models import lora_checkpoint as lora_checkpoint_of

import lmforge
from lmforge.cli import main
from lmforge.errors import LmforgeError

INF = float("inf")
GGUF_GRID = [
    (key, v) for key, base in GGUF_BASE.items() if isinstance(base, int) for v in (0, -1, HUGE)
]
GGUF_GRID += [
    (key, v)
    for key in ("llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base")
    for v in (NAN, INF, -1.0)
]
GGUF_GRID += [("llama.rope.freq_base", 0.0)]
META_GRID = [
    (key, v)
    for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "max_seq_len")
    for v in (NAN, -1, 0, HUGE, "wide")
]
META_GRID += [
    (key, v)
    for key in ("norm_eps", "rope_theta", "ffn_dim_multiplier")
    for v in (NAN, INF, -1.0, "x")
]
META_GRID += [("vocab_size", v) for v in (NAN, -2, HUGE, "many")]  # -1 means "from the weights"
IDS = {"ids": lambda v: v if isinstance(v, str) else value_id(v)}


def _refused(args: list[str], capsys, *fragments: str) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    return assert_one_line_error(err, *fragments)


@pytest.mark.parametrize(("key", "value"), GGUF_GRID, **IDS)
def test_gguf_metadata(key, value, tmp_path, capsys):
    path = gguf_file(tmp_path / "bad.gguf", GGUF_BASE | {key: value})
    before = snapshot(tmp_path)
    _refused(["convert", str(path), "--out", str(tmp_path / "out")], capsys, "bad.gguf", key)
    with pytest.raises(LmforgeError, match=key):
        lmforge.load(str(path), device="cpu")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("key", "value"), META_GRID, **IDS)
def test_meta_params_json(key, value, tmp_path, capsys):
    source = meta_dir(tmp_path / "meta", META_BASE | {key: value})
    before = snapshot(tmp_path)
    _refused(["convert", str(source), "--out", str(tmp_path / "out")], capsys, "params.json", key)
    assert snapshot(tmp_path) == before


def test_the_unmodified_gguf_and_meta_files_pass_the_config_checks(tmp_path, capsys):
    """Controls: the same files fail only later, where their missing parts are read."""
    path = gguf_file(tmp_path / "ok.gguf", GGUF_BASE)
    _refused(["convert", str(path), "--out", str(tmp_path / "a")], capsys, "GGUF llama file lacks")
    source = meta_dir(tmp_path / "meta", META_BASE)
    _refused(["convert", str(source), "--out", str(tmp_path / "b")], capsys, "tokenizer.model")


def test_weights_beyond_memory_in_gguf_and_meta(tmp_path, capsys):
    fragments = ("model needs", "TB of fp32 weights", "free")
    wide = {"llama.embedding_length": 2**20, "llama.feed_forward_length": 2**20}
    path = gguf_file(tmp_path / "huge.gguf", GGUF_BASE | wide)
    _refused(["convert", str(path), "--out", str(tmp_path / "a")], capsys, "huge.gguf", *fragments)
    source = meta_dir(tmp_path / "meta", META_BASE | {"dim": 2**20, "vocab_size": 2**24})
    _refused(["convert", str(source), "--out", str(tmp_path / "b")], capsys, *fragments)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- LoRA checkpoints: what `merge` reads besides the base -----------------------------------------


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory):
    """(base checkpoint, a LoRA checkpoint of it)."""
    root = tmp_path_factory.mktemp("lora")
    base = base_checkpoint(root / "base")
    return base, lora_checkpoint_of(base, root / "adapters")


def _damaged_adapters(lora_checkpoint, tmp_path, name: str, content: bytes):
    _, adapters = lora_checkpoint
    copy = shutil.copytree(adapters, tmp_path / "adapters")
    (copy / name).write_bytes(content)
    return copy


def test_merge_of_the_intact_adapters_works(lora_checkpoint, tmp_path):
    assert main(["merge", str(lora_checkpoint[1]), "--out", str(tmp_path / "merged")]) == 0


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"rank": 0}, "lora.rank must be >= 1"),
        ({"rank": -4}, "lora.rank must be >= 1"),
        ({"rank": NAN}, "lora.rank must be int"),
        ({"alpha": 0.0}, "lora.alpha must be > 0"),
        ({"alpha": NAN}, "lora.alpha must be > 0"),
        ({"alpha": -INF}, "lora.alpha must be > 0"),
        ({"dropout": 1.0}, "lora.dropout must be in [0, 1)"),
        ({"dropout": NAN}, "lora.dropout must be in [0, 1)"),
        ({"base": 5}, "base must be a path"),
        ({"targets": 7}, "targets"),
    ],
    ids=str,
)
def test_merge_refuses_a_bad_adapter_config(lora_checkpoint, tmp_path, capsys, change, fragment):
    config = json.loads((lora_checkpoint[1] / "adapter_config.json").read_text()) | change
    copy = _damaged_adapters(
        lora_checkpoint, tmp_path, "adapter_config.json", json.dumps(config).encode()
    )
    before = snapshot(tmp_path)
    _refused(
        ["merge", str(copy), "--out", str(tmp_path / "merged")],
        capsys,
        "adapter_config.json",
        fragment,
    )
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00" * 64,
        b"\xff\xff\xff\xff\xff\xff\xff\x7f{}",
        b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1}  ',
    ],
    ids=["empty", "zeros", "huge-header", "bad-header"],
)
def test_merge_refuses_corrupt_adapter_weights(lora_checkpoint, tmp_path, capsys, content):
    copy = _damaged_adapters(lora_checkpoint, tmp_path, "adapter_model.safetensors", content)
    before = snapshot(tmp_path)
    _refused(
        ["merge", str(copy), "--out", str(tmp_path / "merged")], capsys, "adapter_model.safetensors"
    )
    assert snapshot(tmp_path) == before


def test_merge_refuses_truncated_adapter_weights(lora_checkpoint, tmp_path, capsys):
    data = (lora_checkpoint[1] / "adapter_model.safetensors").read_bytes()
    copy = _damaged_adapters(lora_checkpoint, tmp_path, "adapter_model.safetensors", data[:-40])
    before = snapshot(tmp_path)
    _refused(
        ["merge", str(copy), "--out", str(tmp_path / "merged")], capsys, "adapter_model.safetensors"
    )
    assert snapshot(tmp_path) == before
