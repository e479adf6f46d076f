"""Hostile checkpoints: a pickle payload in every place a checkpoint or weight file can carry one,
with the manifest forged to match or removed, fed to every lmforge command that reads it.

Each payload is first shown to be live: loading it the unsafe way (what DCP's default planner,
plain pickle or torch.load(weights_only=False) would do) creates the marker file. Then no lmforge
command may create it; each either ignores the hostile part or ends in one line. The counts are
quoted in docs/reliability.md."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from bad_input_builders import TINY, snapshot
from conftest import assert_one_line_error
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from lmforge.checkpoint.directory import MANIFEST_FILE, write_manifest
from lmforge.cli import main
from lmforge.parallel.safe_reader import SafeReader


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _model_and_optimizer(checkpoint: Path) -> dict:
    """A state dict with a model and an optimizer part (as FSDP writes it), read safely."""
    import safetensors.torch

    model = safetensors.torch.load_file(str(checkpoint / "model.safetensors"))
    model["lm_head.weight"] = model.get("lm_head.weight", model["token_embedding.weight"])
    optimizer = {
        name: {"step": torch.tensor(4.0), "exp_avg": v.clone(), "exp_avg_sq": v.abs().clone()}
        for name, v in model.items()
        if name != "lm_head.weight"
    }
    return {"model": model, "optimizer": optimizer}


def _resave(checkpoint: Path, state: dict) -> None:
    sharded = checkpoint / "sharded_state"
    shutil.rmtree(sharded)
    dcp.save(state, checkpoint_id=str(sharded), no_dist=True)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, trained_run) -> Path:
    """The trained run cut to its last checkpoint, whose sharded state holds model and
    optimizer (as with fsdp): resumable, and consolidatable."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    last = (run / "checkpoints" / "last").resolve()
    for other in (run / "checkpoints").glob("step-*"):
        if other != last:
            shutil.rmtree(other)
    (run / "checkpoints" / "best").unlink(missing_ok=True)
    _resave(last, _model_and_optimizer(last))
    write_manifest(last)
    return run


def index_pickle(checkpoint: Path, marker: Path) -> None:
    (checkpoint / "sharded_state" / ".metadata").write_bytes(pickle.dumps(Exploit(marker)))


def model_bytes_item(checkpoint: Path, marker: Path) -> None:
    state = _model_and_optimizer(checkpoint)
    state["model"]["token_embedding.weight"] = Exploit(marker)
    _resave(checkpoint, state)


def optimizer_bytes_item(checkpoint: Path, marker: Path) -> None:
    state = _model_and_optimizer(checkpoint)
    first = next(iter(state["optimizer"]))
    state["optimizer"][first]["step"] = Exploit(marker)
    _resave(checkpoint, state)


def train_state_pickle(checkpoint: Path, marker: Path) -> None:
    torch.save({"step": 4, "payload": Exploit(marker)}, checkpoint / "train_state.pt")


def _unsafe_dcp_load(checkpoint: Path) -> None:
    metadata = FileSystemReader(str(checkpoint / "sharded_state")).read_metadata()
    state = _model_and_optimizer(checkpoint)
    keys = set(metadata.state_dict_metadata)
    state["model"] = {k: v for k, v in state["model"].items() if f"model.{k}" in keys}
    state["optimizer"] = {
        name: {k: v for k, v in entries.items() if f"optimizer.{name}.{k}" in keys}
        for name, entries in state["optimizer"].items()
    }
    reader = FileSystemReader(str(checkpoint / "sharded_state"))
    dcp.load(state, storage_reader=reader, planner=DefaultLoadPlanner(), no_dist=True)


def _unsafe_index_load(checkpoint: Path) -> None:
    with open(checkpoint / "sharded_state" / ".metadata", "rb") as handle:
        pickle.load(handle)  # what FileSystemReader.read_metadata does


def _unsafe_state_load(checkpoint: Path) -> None:
    torch.load(checkpoint / "train_state.pt", weights_only=False)


PAYLOADS = {
    "index-pickle": (index_pickle, _unsafe_index_load),
    "model-bytes-item": (model_bytes_item, _unsafe_dcp_load),
    "optimizer-bytes-item": (optimizer_bytes_item, _unsafe_dcp_load),
    "train-state-pickle": (train_state_pickle, _unsafe_state_load),
}


FINETUNE = ["--finetune.template", "chatml", "--train.seq_len", "128", "--train.max_steps", "1"]
FINETUNE += [
    "--train.micro_batch_size",
    "1",
    "--train.batch_tokens",
    "128",
    "--train.dtype",
    "fp32",
]
FINETUNE += ["--train.peak_tflops", "1", "--train.eval_batches", "1", "--logging.no_progress_bar"]


@pytest.fixture(scope="module")
def chat_records(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("records") / "chat.json"
    turn = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "a b a"}]
    path.write_text(json.dumps([{"messages": turn}] * 8))
    return path


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base_run, chat_records) -> Path:
    """A LoRA finetune of the (intact) base run: what `merge --base` folds into a base."""
    out = tmp_path_factory.mktemp("lora") / "run"
    args = ["finetune", "sft", "--init_from", str(base_run), "--finetune.data", str(chat_records)]
    assert main([*args, *FINETUNE, "--finetune.lora.enabled", "--train.out_dir", str(out)]) == 0
    return out


def _commands(run: Path, tmp: Path, data: Path, corpus: Path, extra) -> dict[str, list[str]]:
    source = ["--data.source", str(corpus), "--data.dir", str(data), "--train.max_steps", "5"]
    records = ["--finetune.data", str(extra["records"]), "--train.out_dir", str(tmp / "ft")]
    return {
        "finetune": ["finetune", "sft", "--init_from", str(run), *records, *FINETUNE],
        "merge": ["merge", str(extra["lora"]), "--base", str(run), "--out", str(tmp / "merged")],
        "resume": ["train", *TINY, *source, "--train.out_dir", str(run), "--resume"],
        "init_from": [
            "train",
            *TINY,
            *source,
            "--train.out_dir",
            str(tmp / "new"),
            "--train.max_steps",
            "1",
            "--init_from",
            str(run),
        ],  # fmt: skip
        "consolidate": ["consolidate", "--checkpoint", str(run)],
        "sample": ["sample", "--checkpoint", str(run), "--prompt", "x", "--max_new_tokens", "2"],
        "eval": [
            "eval",
            "loss",
            "--checkpoint",
            str(run),
            "--data",
            str(data),
            "--batches",
            "1",
            "--batch_size",
            "1",
            "--seq_len",
            "16",
            "--dtype",
            "fp32",
        ],  # fmt: skip
        "export": ["export", str(run), "--format", "hf", "--out", str(tmp / "hf")],
    }


# Where lmforge reads the payload's file, it must refuse it with one of these words.
MUST_REFUSE = {("index-pickle", "resume"), ("index-pickle", "consolidate")}
MUST_REFUSE |= {(p, "resume") for p in PAYLOADS} | {
    ("model-bytes-item", "consolidate"),
    ("optimizer-bytes-item", "consolidate"),
}
REFUSALS = (
    "refusing to load it",
    "pickled bytes",
    "weights_only=True",
    "no intact checkpoint",
    "no manifest.json",
)

COMMANDS = ("resume", "init_from", "consolidate", "sample", "eval", "export")
CASES = [(p, m, c) for p in PAYLOADS for m in ("forged", "removed") for c in COMMANDS]
# finetune and merge read only the weights, config and tokenizer: the forged manifest is enough.
CASES += [(p, "forged", c) for p in PAYLOADS for c in ("finetune", "merge")]


@pytest.fixture
def hostile(tmp_path, base_run):
    run = tmp_path / "run"
    shutil.copytree(base_run, run, symlinks=True)
    return run, (run / "checkpoints" / "last").resolve(), tmp_path / "pwned"


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_each_payload_is_live_when_loaded_unsafely(payload, hostile):
    run, checkpoint, marker = hostile
    plant, unsafe_load = PAYLOADS[payload]
    plant(checkpoint, marker)
    # os.system returns 0 in place of the object, so the unsafe load may stumble afterwards.
    with contextlib.suppress(BaseException):
        unsafe_load(checkpoint)
    assert marker.exists()


@pytest.mark.parametrize(("payload", "manifest", "command"), CASES)
def test_no_command_runs_a_payload(
    payload, manifest, command, hostile, byte_data_dir, corpus_file, request, capsys
):
    run, checkpoint, marker = hostile
    extra = {"records": "unused", "lora": None}
    if command in ("finetune", "merge"):
        extra = {"records": request.getfixturevalue("chat_records")}
        extra["lora"] = request.getfixturevalue("lora_run") if command == "merge" else None
    PAYLOADS[payload][0](checkpoint, marker)
    if manifest == "forged":
        write_manifest(checkpoint)  # a forger recomputes the checksums
    else:
        (checkpoint / MANIFEST_FILE).unlink()
    before = snapshot(run)
    args = _commands(run, run.parent, byte_data_dir, corpus_file, extra)[command]
    code = main(args)
    err = capsys.readouterr().err
    assert not marker.exists(), f"{payload} ran through {command}"
    assert "Traceback" not in err
    if (payload, command) in MUST_REFUSE:
        assert code == 2, err
        line = assert_one_line_error(err.splitlines()[-1] + "\n")
        assert any(word in line for word in REFUSALS), line
        assert snapshot(run) == before
    elif command == "consolidate" and manifest == "removed":
        assert code == 2 and "no manifest.json" in err, err  # it reads only verified content
    else:
        assert code == 0, err  # the command ran, without touching the hostile part


def test_underfilled_index_is_refused_by_consolidate(hostile, capsys):
    """A forged index that lists half of a tensor's chunk: without the fill check, consolidate
    would write uninitialised memory as the model."""
    run, checkpoint, _ = hostile
    sharded = checkpoint / "sharded_state"
    metadata = SafeReader(sharded).read_metadata()
    entry = metadata.state_dict_metadata["model.token_embedding.weight"]
    chunk = entry.chunks[0]
    chunk.sizes = torch.Size([chunk.sizes[0] // 2, *chunk.sizes[1:]])
    metadata.storage_meta = None
    (sharded / ".metadata").write_bytes(pickle.dumps(metadata))
    write_manifest(checkpoint)
    before = snapshot(run)
    assert main(["consolidate", "--checkpoint", str(run)]) == 2
    assert_one_line_error(capsys.readouterr().err, "do not cover the tensor exactly once")
    assert snapshot(run) == before


def test_corrupt_shard_file_is_one_line(hostile, capsys):
    run, checkpoint, _ = hostile
    shard = next((checkpoint / "sharded_state").glob("*.distcp"))
    shard.write_bytes(b"\0" * shard.stat().st_size)
    write_manifest(checkpoint)
    assert main(["consolidate", "--checkpoint", str(run)]) == 2
    assert_one_line_error(capsys.readouterr().err, "could not be read")


def test_consolidate_writes_the_saved_model(hostile, capsys):
    """The control: an intact checkpoint consolidates to exactly the weights it holds."""
    import safetensors.torch

    run, checkpoint, _ = hostile
    expected = safetensors.torch.load_file(str(checkpoint / "model.safetensors"))
    (checkpoint / "model.safetensors").unlink()
    write_manifest(checkpoint)
    assert main(["consolidate", "--checkpoint", str(run)]) == 0
    written = safetensors.torch.load_file(str(checkpoint / "model.safetensors"))
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)


def _hf_dir_with_bin(run: Path, directory: Path, marker: Path) -> Path:
    assert main(["export", str(run), "--format", "hf", "--out", str(directory)]) == 0
    (directory / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Exploit(marker)}, directory / "pytorch_model.bin")
    return directory / "pytorch_model.bin"


def _meta_dir(directory: Path, shared_data: Path, marker: Path) -> Path:
    directory.mkdir()
    params = {"dim": 64, "n_layers": 2, "n_heads": 4, "norm_eps": 1e-5, "vocab_size": -1}
    (directory / "params.json").write_text(__import__("json").dumps(params))
    tokenizer = shared_data / "tokenizers" / "llama2" / "tokenizer.model"
    shutil.copy(tokenizer, directory / "tokenizer.model")
    torch.save({"tok_embeddings.weight": Exploit(marker)}, directory / "consolidated.00.pth")
    return directory / "consolidated.00.pth"


@pytest.mark.parametrize("kind", ["hf-bin", "meta-pth"])
def test_convert_never_unpickles_weight_files(kind, hostile, request, capsys):
    run, _, marker = hostile
    source = run.parent / kind
    if kind == "hf-bin":
        weights = _hf_dir_with_bin(run, source, marker)
    else:
        weights = _meta_dir(source, request.getfixturevalue("shared_data"), marker)
    capsys.readouterr()
    assert main(["convert", str(source), "--out", str(run.parent / "out")]) == 2
    assert_one_line_error(capsys.readouterr().err, weights.name)
    assert not marker.exists()
    torch.load(weights, weights_only=False)  # the control: the payload is live
    assert marker.exists()


def test_hostile_counts():
    """Quoted in docs/reliability.md: hostile files x commands tried, payloads executed (0)."""
    assert len(CASES) == 56 and len(PAYLOADS) + 2 == 6
