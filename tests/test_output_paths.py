"""Every output path is checked before work starts: export (hf, gguf), convert, merge and
consolidate refuse an output that is in the way (a file, a directory with files in it), that lies
under a file, or whose directory cannot be written, in one line with exit code 2 and nothing
written or removed. A missing parent is created. A write that fails anyway (a full disk) is one
line too, and leaves no half-written output."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
from bad_input_builders import snapshot
from conftest import assert_one_line_error
from malformed_models import base_checkpoint, bpe_checkpoint, lora_checkpoint, sharded_checkpoint

from lmforge import config_checks
from lmforge.checkpoint.stream_weights import SafetensorsStream
from lmforge.cli import main


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    checkpoint = bpe_checkpoint(root / "checkpoint")
    gguf = root / "model.gguf"
    assert main(["export", str(checkpoint), "--format", "gguf", "--out", str(gguf)]) == 0
    base = base_checkpoint(root / "base")  # a byte tokenizer: LoRA's base, and FSDP's
    adapters = lora_checkpoint(base, root / "adapters")
    return {"checkpoint": checkpoint, "gguf": gguf, "adapters": adapters, "base": base}


# command: (arguments writing to OUT, whether OUT is a file)
COMMANDS = {
    "export-hf": (
        lambda s, out: ["export", str(s["checkpoint"]), "--format", "hf", "--out", out],
        False,
    ),
    "export-gguf": (
        lambda s, out: ["export", str(s["checkpoint"]), "--format", "gguf", "--out", out],
        True,
    ),
    "convert": (lambda s, out: ["convert", str(s["gguf"]), "--out", out], False),
    "merge": (lambda s, out: ["merge", str(s["adapters"]), "--out", out], False),
}


def _deny_writes_to(monkeypatch, directory: Path) -> None:
    """`directory` unwritable: chmod does not bind root (tests may run as root), os.access does."""
    real = os.access
    denied = directory.resolve()

    def access(path, mode, *args, **kwargs):
        if Path(path).resolve() == denied and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(config_checks.os, "access", access)


def _place(case: str, tmp: Path, monkeypatch, is_file: bool) -> tuple[Path, str]:
    """An output path of `case`, prepared in `tmp`; the fragment the refusal must hold."""
    work = tmp / "work"
    work.mkdir()
    (work / "a-file").write_text("mine")
    if case == "a-file-in-the-way":
        return work / "a-file", "already exists"
    if case == "a-directory-with-files":
        (work / "full").mkdir()
        (work / "full" / "notes.txt").write_text("mine")
        return work / "full", "already exists" if is_file else "not empty"
    if case == "under-a-file":
        return work / "a-file" / "out", "which is a file"
    if case == "unwritable-parent":
        _deny_writes_to(monkeypatch, work)
        return work / "out", "is not writable"
    raise AssertionError(case)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(
    "case", ["a-file-in-the-way", "a-directory-with-files", "under-a-file", "unwritable-parent"]
)
def test_a_bad_output_is_refused_before_work(command, case, sources, tmp_path, monkeypatch, capsys):
    build, is_file = COMMANDS[command]
    out, fragment = _place(case, tmp_path, monkeypatch, is_file)
    before = snapshot(tmp_path)
    assert main(build(sources, str(out))) == 2
    assert_one_line_error(capsys.readouterr().err, "--out", fragment)
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == sorted(  # no staging left
        p.name for p in (tmp_path / "work").iterdir() if not p.name.endswith(".tmp")
    )


@pytest.mark.parametrize("command", list(COMMANDS))
def test_missing_parents_are_created(command, sources, tmp_path):
    build, _ = COMMANDS[command]
    out = tmp_path / "new" / "deeper" / ("model.gguf" if command == "export-gguf" else "out")
    assert main(build(sources, str(out))) == 0
    assert out.exists()


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_full_disk_while_writing_is_one_line(command, sources, tmp_path, monkeypatch, capsys):
    import gguf

    monkeypatch.setattr(safetensors.torch, "save_file", _no_space)
    monkeypatch.setattr(safetensors.torch, "save_model", _no_space)
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", _no_space)
    build, _ = COMMANDS[command]
    work = tmp_path / "work"
    work.mkdir()
    assert main(build(sources, str(work / "out"))) == 2
    assert_one_line_error(capsys.readouterr().err, "could not write", "No space left on device")
    assert list(work.iterdir()) == []  # neither the output nor its staging copy


@pytest.fixture
def sharded(sources, tmp_path) -> Path:
    return sharded_checkpoint(sources["base"], tmp_path / "fsdp")


def test_consolidate_refuses_an_unwritable_checkpoint(sharded, tmp_path, monkeypatch, capsys):
    _deny_writes_to(monkeypatch, sharded)
    before = snapshot(tmp_path)
    assert main(["consolidate", "--checkpoint", str(sharded)]) == 2
    assert_one_line_error(capsys.readouterr().err, "--checkpoint", "is not writable")
    assert snapshot(tmp_path) == before


def test_consolidate_refuses_a_disk_without_room(sharded, tmp_path, monkeypatch, capsys):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(config_checks.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    before = snapshot(tmp_path)
    assert main(["consolidate", "--checkpoint", str(sharded)]) == 2
    assert_one_line_error(capsys.readouterr().err, "--checkpoint", "free disk space")
    assert snapshot(tmp_path) == before


def test_consolidate_full_disk_while_writing(sharded, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(SafetensorsStream, "write", _no_space)  # consolidate streams the file
    before = snapshot(tmp_path)
    assert main(["consolidate", "--checkpoint", str(sharded)]) == 2
    assert_one_line_error(capsys.readouterr().err, "could not write", "No space left on device")
    assert snapshot(tmp_path) == before  # the old model.safetensors kept, no .tmp left


def test_consolidate_writes_when_it_can(sharded, capsys):
    assert main(["consolidate", "--checkpoint", str(sharded)]) == 0
