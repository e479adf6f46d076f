"""The workspace builders of the bad-input catalogue (test_bad_input_catalogue.py): each takes
the `world` workspace and returns the command line of one user mistake, damaging files in the
workspace first where the mistake is a damaged file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
from pathlib import Path

from lmforge.checkpoint import run_state
from lmforge.checkpoint.directory import write_manifest

TINY = ["--model.preset", "tiny-llama", "--data.tokenizer", "byte", "--train.seq_len", "32"]
TINY += ["--train.micro_batch_size", "4", "--train.batch_tokens", "128", "--train.dtype", "fp32"]
TINY += ["--train.peak_tflops", "1", "--train.eval_batches", "1", "--logging.no_progress_bar"]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def train(world, *extra: str, out: str | None = None) -> list[str]:
    source = ["--data.source", str(world["corpus"]), "--data.dir", str(world["data"])]
    out_dir = ["--train.out_dir", out or str(world["tmp"] / "new-run")]
    return ["train", *TINY, *source, *out_dir, "--train.max_steps", "2", *extra]


def last_checkpoint(world) -> Path:
    return (world["run"] / "checkpoints" / "last").resolve()


def truncate_weights(world) -> list[str]:
    path = last_checkpoint(world) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    return ["sample", "--checkpoint", str(world["run"]), "--prompt", "x"]


def truncate_weights_without_manifest(world) -> list[str]:
    (last_checkpoint(world) / "manifest.json").unlink()
    return truncate_weights(world)


def drop_tokenizer(world) -> list[str]:
    (last_checkpoint(world) / "lmforge_tokenizer.json").unlink()
    return ["sample", "--checkpoint", str(world["run"])]


def malicious_train_state(world) -> list[str]:
    import torch

    path = last_checkpoint(world) / "train_state.pt"
    torch.save({"payload": Exploit(world["tmp"] / "pwned")}, path)
    write_manifest(last_checkpoint(world))  # a forger can rewrite the checksums too
    return train(world, "--resume", out=str(world["run"]))


def malicious_shard_index(world) -> list[str]:
    path = last_checkpoint(world) / "sharded_state" / ".metadata"
    path.write_bytes(pickle.dumps(Exploit(world["tmp"] / "pwned")))
    write_manifest(last_checkpoint(world))
    return train(world, "--resume", out=str(world["run"]))


def full_disk(world, monkeypatch) -> list[str]:
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_state.ckpt, "write_checkpoint_files", no_space)
    return train(world, "--resume", "--train.max_steps", "6", out=str(world["run"]))


def sample(world, *extra: str) -> list[str]:
    return ["sample", "--checkpoint", str(world["run"]), "--prompt", "x", *extra]


def chat(world, *extra: str) -> list[str]:
    return ["chat", "--checkpoint", str(world["run"]), *extra]


def toml(world, text: bytes | str) -> list[str]:
    path = world["tmp"] / "bad.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return train(world, "--config", str(path))


def corrupt(name: str, content: bytes, manifest: str = "forged", command: str = "sample"):
    """Replace a checkpoint file; the manifest is recomputed (a careful editor), removed, or
    kept as it is (when it is the file replaced)."""

    def build(world) -> list[str]:
        checkpoint = last_checkpoint(world)
        (checkpoint / name).write_bytes(content)
        if manifest == "forged":
            write_manifest(checkpoint)
        elif manifest == "removed":
            (checkpoint / "manifest.json").unlink()
        if command == "init_from":
            return train(world, "--init_from", str(world["run"]))
        return sample(world)

    return build


def finetune(world, *extra: str, method: str = "sft") -> list[str]:
    records = ["--finetune.data", str(world["tmp"] / "chat.json"), "--finetune.template", "chatml"]
    out = ["--train.out_dir", str(world["tmp"] / "ft"), "--train.dtype", "fp32"]
    return ["finetune", method, "--init_from", str(world["run"]), *records, *out, *extra]


def finetune_from_truncated(world) -> list[str]:
    truncate_weights_without_manifest(world)
    return finetune(world)


def out_dir_is_file(world) -> list[str]:
    (world["tmp"] / "a-file").write_text("x")
    return train(world, out=str(world["tmp"] / "a-file"))


def out_dir_under_file(world) -> list[str]:
    (world["tmp"] / "a-file").write_text("x")
    return train(world, out=str(world["tmp"] / "a-file" / "run"))


def data_dir_is_file(world) -> list[str]:
    (world["tmp"] / "a-file").write_text("x")
    args = train(world)
    args[args.index("--data.dir") + 1] = str(world["tmp"] / "a-file")
    return args


def edit_config(command: str = "sample", **changes):
    """Change fields of the last checkpoint's config.json (the manifest recomputed to match)."""

    def build(world) -> list[str]:
        checkpoint = last_checkpoint(world)
        config = json.loads((checkpoint / "config.json").read_text()) | changes
        (checkpoint / "config.json").write_text(json.dumps(config))
        write_manifest(checkpoint)
        if command == "init_from":
            return train(world, "--init_from", str(world["run"]))
        if command == "export":
            return [
                "export",
                str(world["run"]),
                "--format",
                "hf",
                "--out",
                str(world["tmp"] / "hf"),
            ]
        return sample(world)

    return build


def export_to(place: str):
    """`export --format hf` into an output that is in the way or cannot be made."""

    def build(world) -> list[str]:
        (world["tmp"] / "a-file").write_text("x")
        (world["tmp"] / "full").mkdir()
        (world["tmp"] / "full" / "notes.txt").write_text("x")
        out = {"file": "a-file", "under-file": "a-file/hf", "non-empty": "full"}[place]
        return ["export", str(world["run"]), "--format", "hf", "--out", str(world["tmp"] / out)]

    return build
