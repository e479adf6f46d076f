"""Tensor parallelism changes no math: 2 ranks of TP alone and 4 ranks as a 2 x 2 mesh (FSDP x
TP) give one process's per-step losses and final weights, for Llama (GQA), GPT-2 (tied head,
learned positions), MoE and MLA; a checkpoint resumes at another mesh shape. CPU, gloo, real
processes through `lmforge launch`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, rewind
from distributed_fixtures import (
    assert_same_run,
    check,
    final_weights,
    run_launched,
    run_single,
    write_config,
)

# Llama (GQA 4/2), GPT-2 (tied head, learned positions), Mixtral (GQA + MoE), DeepSeek (MLA + MoE)
PRESETS = ["tiny-llama", "tiny-gpt2", "tiny-mixtral", "tiny-deepseek"]
TOLERANCE = 1e-5
"""The same sums in another order: a TP rank's partial matmuls are added by an all-reduce."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, corpus_file, byte_data_dir) -> Path:
    directory = tmp_path_factory.mktemp("tensor-parallel")
    write_config(directory / "run.toml", corpus_file, byte_data_dir, micro_batch_size=2)
    return directory


def train_args(out_dir: str, preset: str, *extra: str) -> list[str]:
    return ["train", "--config", "run.toml", "--train.out_dir", out_dir,
            "--model.preset", preset, *extra]  # fmt: skip


def tensor_parallel(degree: int, *extra: str) -> list[str]:
    return ["--parallel.strategy", "fsdp", "--parallel.tensor_parallel", str(degree), *extra]


def single(workdir: Path, preset: str) -> Path:
    """The reference: one process, 4 accumulation steps of 2 x 32 tokens."""
    if not (workdir / f"single-{preset}").exists():
        check(run_single(*train_args(f"single-{preset}", preset), cwd=workdir))
    return workdir / f"single-{preset}"


@pytest.mark.parametrize("preset", PRESETS)
def test_two_ranks_of_tensor_parallelism_equal_one_process(workdir, preset):
    out = f"tp2-{preset}"
    result = check(run_launched(*train_args(out, preset, *tensor_parallel(2)), cwd=workdir))
    assert "fsdp 1 x tp 2 (sequence parallel)" in result.stdout
    assert_same_run(workdir / out, single(workdir, preset), TOLERANCE)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-deepseek"])
def test_a_two_by_two_mesh_equals_one_process(workdir, preset):
    out = f"mesh-{preset}"
    args = train_args(out, preset, *tensor_parallel(2))
    result = check(run_launched(*args, cwd=workdir, nproc=4))
    assert "fsdp 2 x tp 2" in result.stdout
    assert_same_run(workdir / out, single(workdir, preset), TOLERANCE)


def test_without_sequence_parallelism_too(workdir):
    out = "tp2-no-sp"
    args = train_args(out, "tiny-llama", *tensor_parallel(2, "--parallel.no_sequence_parallel"))
    result = check(run_launched(*args, cwd=workdir))
    assert "tp 2 |" in result.stdout
    assert_same_run(workdir / out, single(workdir, "tiny-llama"), TOLERANCE)


def test_a_mesh_checkpoint_resumes_at_another_mesh_shape(workdir):
    """Saved at 2 x 2 (FSDP x TP), resumed at 1 x 2 (TP alone): the uninterrupted run's end."""
    mesh = workdir / "mesh-tiny-llama"
    if not mesh.exists():
        check(
            run_launched(
                *train_args(mesh.name, "tiny-llama", *tensor_parallel(2)), cwd=workdir, nproc=4
            )
        )
    resumed = rewind(mesh, workdir / "mesh-to-tp", step=5)
    args = train_args(resumed.name, "tiny-llama", "--resume", *tensor_parallel(2))
    result = check(run_launched(*args, cwd=workdir))
    assert "at step 5" in result.stdout
    assert_same_run(resumed, single(workdir, "tiny-llama"), TOLERANCE)


def test_a_tensor_parallel_checkpoint_resumes_without_it_and_back(workdir):
    """The other row order on each side: the weights come from model.safetensors and the AdamW
    moments are reordered one tensor at a time; both runs end where the uninterrupted one does."""
    reference = single(workdir, "tiny-llama")
    tp = workdir / "tp2-tiny-llama"
    if not tp.exists():
        check(run_launched(*train_args(tp.name, "tiny-llama", *tensor_parallel(2)), cwd=workdir))
    plain = rewind(tp, workdir / "tp-to-fsdp", step=5)
    args = train_args(plain.name, "tiny-llama", "--resume", "--parallel.strategy", "fsdp")
    check(run_launched(*args, cwd=workdir))
    assert_same_run(plain, reference, TOLERANCE)
    back = rewind(reference, workdir / "single-to-tp", step=5)
    check(
        run_launched(
            *train_args(back.name, "tiny-llama", "--resume", *tensor_parallel(2)), cwd=workdir
        )
    )
    assert_same_run(back, reference, TOLERANCE)


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (tensor_parallel(3), ["tensor_parallel=3", "1 ranks"]),
        (["--parallel.tensor_parallel", "2"], ["tensor_parallel=2", "fsdp"]),
        (tensor_parallel(0), ["tensor_parallel", ">= 1"]),
    ],
)
def test_impossible_tensor_parallel_settings_are_one_line_errors(workdir, flags, fragments):
    result = run_single(*train_args("bad-tp", "tiny-llama", *flags), cwd=workdir)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, *fragments)
    assert not (workdir / "bad-tp" / "checkpoints").exists()


def test_heads_a_degree_cannot_split_are_one_line_errors(workdir):
    args = train_args("bad-heads", "tiny-llama", *tensor_parallel(2, "--model.num_kv_heads", "1"))
    result = run_launched(*args, cwd=workdir)
    assert result.returncode != 0
    assert_one_line_error(result.stderr, "num_kv_heads=1", "divide")


def test_consolidate_of_a_mesh_checkpoint_writes_the_plain_row_order(workdir, tmp_path):
    """The sharded state holds the regrouped rows; consolidate (one tensor at a time) writes the
    files' order: bitwise what the run itself gathered, which matches one process."""
    mesh = workdir / "mesh-tiny-llama"
    if not mesh.exists():
        check(
            run_launched(
                *train_args(mesh.name, "tiny-llama", *tensor_parallel(2)), cwd=workdir, nproc=4
            )
        )
    copy = rewind(mesh, tmp_path / "copy", step=10)
    (copy / "checkpoints" / "last" / "model.safetensors").resolve().unlink()
    check(run_single("consolidate", "--checkpoint", str(copy), cwd=workdir))
    expected = final_weights(mesh)
    assert final_weights(copy).keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(final_weights(copy)[name], tensor), name
