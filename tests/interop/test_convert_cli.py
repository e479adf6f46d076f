"""`lmforge convert` / `lmforge export`: format detection and one-line errors (exit 2) for bad
input, with nothing half-written left behind."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, run_cli
from hf_fixtures import save_hf_dir

from lmforge.checkpoint.detect import detect_format
from lmforge.cli import main

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A saved tiny Llama HF directory (read-only: copy it to break it)."""
    directory = tmp_path_factory.mktemp("hf") / "llama"
    save_hf_dir("llama-gqa-untied", directory)
    return directory


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ours") / "llama"
    assert main(["convert", str(hf_dir), "--out", str(out)]) == 0
    return out


def _copy(directory, target):
    target.mkdir()
    for path in directory.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def _fails(args, capsys, *fragments):
    assert main(args) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, *fragments)
    return captured


def _convert_fails(source, out, capsys, *fragments):
    _fails(["convert", str(source), "--out", str(out)], capsys, *fragments)
    assert not out.exists(), "a failed convert must not leave its output behind"
    assert not out.with_name(out.name + ".tmp").exists()


def test_detect_format(hf_dir, tmp_path):
    assert detect_format(hf_dir) == "hf"
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "params.json").write_text("{}")
    (meta / "consolidated.00.pth").write_bytes(b"")
    assert detect_format(meta) == "meta"
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert detect_format(tmp_path / "model.gguf") == "gguf"


def test_unsupported_model_type(hf_dir, tmp_path, capsys):
    source = _copy(hf_dir, tmp_path / "bert")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
    _convert_fails(source, tmp_path / "out", capsys, "model_type 'bert'", "gpt2, llama")


def test_truncated_safetensors(hf_dir, tmp_path, capsys):
    source = _copy(hf_dir, tmp_path / "truncated")
    data = (source / "model.safetensors").read_bytes()
    (source / "model.safetensors").write_bytes(data[: len(data) // 2])
    _convert_fails(source, tmp_path / "out", capsys, "model.safetensors", "corrupt or truncated")


def test_corrupt_config_json(hf_dir, tmp_path, capsys):
    source = _copy(hf_dir, tmp_path / "corrupt")
    (source / "config.json").write_text('{"model_type": "llama", ')
    _convert_fails(source, tmp_path / "out", capsys, "config.json")


def test_missing_config_json(hf_dir, tmp_path, capsys):
    source = _copy(hf_dir, tmp_path / "noconfig")
    (source / "config.json").unlink()
    _fails(["convert", str(source), "--out", str(tmp_path / "out"), "--format", "hf"], capsys,
           "no config.json")  # fmt: skip
    _convert_fails(source, tmp_path / "out", capsys, "cannot tell what")


def test_missing_weights(hf_dir, tmp_path, capsys):
    source = _copy(hf_dir, tmp_path / "noweights")
    (source / "model.safetensors").unlink()
    _convert_fails(source, tmp_path / "out", capsys, "has no weights")


def test_vocab_mismatch(hf_dir, tmp_path, capsys):
    source = _copy(hf_dir, tmp_path / "small-vocab")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(config | {"vocab_size": 100}))
    _convert_fails(source, tmp_path / "out", capsys, "has 302 tokens", "vocab_size is 100")


def test_existing_non_empty_out(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _fails(["convert", str(hf_dir), "--out", str(out)], capsys, "not empty")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_missing_source(tmp_path, capsys):
    _convert_fails(tmp_path / "nowhere", tmp_path / "out", capsys, "does not exist")


def test_export_refusals(imported, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    export = ["export", str(imported), "--format", "hf", "--out"]
    _fails([*export, str(out)], capsys, "not empty")
    _fails([*export, str(tmp_path / "x"), "--dtype", "f16"], capsys, "float32, float16, bfloat16")
    gguf = ["export", str(imported), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]
    _fails([*gguf, "--dtype", "float16"], capsys, "f32, f16, bf16, q8_0")
    _fails(["export", str(tmp_path / "nowhere"), "--format", "hf", "--out", str(tmp_path / "y")],
           capsys, "does not exist")  # fmt: skip
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_unexportable_tokenizer_is_refused(imported, tmp_path, capsys, monkeypatch):
    """A tokenizer with no HF equivalent fails in one line, before anything is written."""
    from lmforge.tokenizer.simple import ByteTokenizer

    checkpoint = _copy(imported, tmp_path / "ckpt")
    ByteTokenizer().save(checkpoint)
    (checkpoint / "manifest.json").unlink()  # edited on purpose: the documented way
    monkeypatch.setattr(ByteTokenizer, "kind", "mystery")
    out = tmp_path / "exported"
    _fails(["export", str(checkpoint), "--format", "hf", "--out", str(out)], capsys,
           "cannot export a mystery tokenizer", "huggingface, byte, char")  # fmt: skip
    assert list(tmp_path.glob("*exported*")) == []


def test_cli_subprocess_exit_code_and_one_line(hf_dir, tmp_path):
    out = tmp_path / "out"
    done = run_cli("convert", str(hf_dir), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "imported hf" in done.stdout and "parameters" in done.stdout
    again = run_cli("convert", str(hf_dir), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 2
    assert_one_line_error(again.stderr, "not empty")


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_gguf_round_trip_through_cli(dtype, imported, tmp_path, capsys):
    """export --format gguf, then convert (auto-detected) gives back the model's logits."""
    import torch

    from lmforge.checkpoint.directory import load_model

    gguf = tmp_path / "model.gguf"
    args = ["export", str(imported), "--format", "gguf", "--out", str(gguf), "--dtype", dtype]
    assert main(args) == 0, capsys.readouterr().err
    assert main(["convert", str(gguf), "--out", str(tmp_path / "back")]) == 0
    assert "imported gguf" in capsys.readouterr().out
    model, tokenizer, _ = load_model(imported)
    back, back_tokenizer, _ = load_model(tmp_path / "back")
    tokens = torch.randint(
        0, tokenizer.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        diff = (model(tokens) - back(tokens)).abs().max().item()
    assert diff <= (1e-4 if dtype == "f32" else 0.5), diff
    assert back_tokenizer.encode("the quick brown fox") == tokenizer.encode("the quick brown fox")
    _fails(args, capsys, "already exists")
