"""Finetuning end to end on a tiny random Llama (seconds each): SFT lowers held-out loss, DPO
raises held-out preference accuracy, distillation lowers the KL to the teacher; LoRA runs save
adapters only, resume exactly and merge into a checkpoint that `sample` takes; early stopping,
--start_step and --reset_optimizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import rewind
from finetune_fixtures import alpaca_file, finetune_toml, preference_file, tiny_base  # noqa: F401

from lmforge.checkpoint.adapters import ADAPTER_FILE
from lmforge.checkpoint.directory import MODEL_FILE, load_model
from lmforge.cli import main
from lmforge.config import FinetuneRunConfig, load_run_config
from lmforge.finetune.run import finetune


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def metric(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records(run_dir) if key in r}


def run_config(tmp_path: Path, method: str, data: Path, out: str, **sections) -> FinetuneRunConfig:
    path = finetune_toml(tmp_path / f"{out}.toml", method, data, str(tmp_path / out), **sections)
    return load_run_config(str(path), cls=FinetuneRunConfig)


def test_sft_lowers_held_out_loss(tmp_path, tiny_base, alpaca_file):  # noqa: F811
    run = run_config(
        tmp_path, "sft", alpaca_file, "sft",
        finetune={"init_from": str(tiny_base), "packing": True}, train={"eval_at_start": True},
    )  # fmt: skip
    result = finetune(run)
    val = metric(result.out_dir, "val_loss")
    assert sorted(val) == [0, 3, 6]
    assert val[6] < val[0] - 0.5, val
    assert (result.out_dir / "checkpoints" / "last" / MODEL_FILE).is_file()


def test_lora_saves_adapters_resumes_exactly_merges(tmp_path, tiny_base, alpaca_file, capsys):  # noqa: F811
    lora = {"enabled": True, "rank": 4, "targets": ["attn.qkv", "ffn.down"]}
    run = run_config(
        tmp_path, "sft", alpaca_file, "lora", finetune={"init_from": str(tiny_base), "lora": lora}
    )
    full = finetune(run).out_dir
    last = full / "checkpoints" / "last"
    assert not (last / MODEL_FILE).exists()
    adapter_bytes = (last / ADAPTER_FILE).stat().st_size
    assert adapter_bytes < 0.1 * (tiny_base / MODEL_FILE).stat().st_size

    # Resume from step 3 of a copy: the same losses and adapters as the run that never stopped.
    resumed_dir = rewind(full, tmp_path / "resumed", 3)
    resumed = run_config(
        tmp_path,
        "sft",
        alpaca_file,
        "resumed",
        finetune={"init_from": str(tiny_base), "lora": lora},
    )
    finetune(resumed, resume=True)
    assert metric(resumed_dir, "loss") == pytest.approx(metric(full, "loss"), rel=1e-6)
    expected = safetensors.torch.load_file(last / ADAPTER_FILE)
    got = safetensors.torch.load_file(resumed_dir / "checkpoints" / "last" / ADAPTER_FILE)
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, rtol=0, atol=0)

    # sample refuses the adapters and points at merge; the merged checkpoint samples.
    assert main(["sample", "--checkpoint", str(full), "--prompt", "hi"]) == 2
    assert "lmforge merge" in capsys.readouterr().err
    merged = tmp_path / "merged"
    assert main(["merge", str(full), "--out", str(merged)]) == 0
    assert (
        main(["sample", "--checkpoint", str(merged), "--prompt", "red", "--max_new_tokens", "4"])
        == 0
    )
    model, _, _ = load_model(merged)
    base, _, _ = load_model(tiny_base)
    changed = (model.layers[0].attn.qkv.weight - base.layers[0].attn.qkv.weight).abs().max()
    unchanged = (model.layers[0].attn.out.weight - base.layers[0].attn.out.weight).abs().max()
    assert changed > 0 and unchanged == 0


@pytest.mark.parametrize("lora", [True, False])
def test_dpo_raises_held_out_preference_accuracy(tmp_path, tiny_base, preference_file, lora):  # noqa: F811
    run = run_config(
        tmp_path, "dpo", preference_file, "dpo",
        finetune={"init_from": str(tiny_base), "lora": {"enabled": lora}, "dpo_beta": 0.5},
        train={"eval_at_start": True},
    )  # fmt: skip
    out = finetune(run).out_dir
    accuracy = metric(out, "val_pref_accuracy")
    assert accuracy[0] == 0.5  # the policy starts equal to its reference: every margin is 0
    assert accuracy[6] > 0.5, accuracy
    assert metric(out, "val_reward_margin")[6] > 0
    assert set(metric(out, "pref_accuracy")) == set(range(1, 7))  # train metrics per log


def test_distill_lowers_kl_to_the_teacher(tmp_path, tiny_base, alpaca_file):  # noqa: F811
    run = run_config(
        tmp_path, "distill", alpaca_file, "distill",
        finetune={"teacher": str(tiny_base), "student_layers": 1, "distill_alpha": 1.0,
                  "temperature": 1.0},
        train={"eval_at_start": True},
    )  # fmt: skip
    out = finetune(run).out_dir
    kl = metric(out, "val_kl")
    assert kl[6] < kl[0], kl
    assert load_model(out)[0].config.num_layers == 1


def test_early_stopping_start_step_and_reset_optimizer(tmp_path, tiny_base, alpaca_file):  # noqa: F811
    sections = {"finetune": {"init_from": str(tiny_base)}}
    stuck = run_config(
        tmp_path, "sft", alpaca_file, "stuck", optim={"lr": 0.0, "min_lr": 0.0},
        train={"eval_interval": 1, "early_stopping_patience": 2, "max_steps": 20}, **sections,
    )  # fmt: skip
    result = finetune(stuck)  # the loss never improves after the first evaluation
    assert result.step == 3
    assert (result.out_dir / "checkpoints" / "last").resolve().name == "step-0000003"

    first = run_config(tmp_path, "sft", alpaca_file, "first", **sections)
    finetune(first)
    again = rewind(Path(first.train.out_dir), tmp_path / "again", 3)
    restart = run_config(tmp_path, "sft", alpaca_file, "again", **sections)
    result = finetune(restart, resume=True, start_step=1, reset_optimizer=True)
    assert result.step == 6
    losses = metric(again, "loss")
    assert sorted(losses) == list(range(1, 7))  # steps 1-3 from the first run, then 2-6 again
