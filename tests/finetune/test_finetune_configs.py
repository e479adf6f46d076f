"""The shipped finetune configs load, resolve by name and round-trip through dump_toml."""

from __future__ import annotations

import pytest

from lmforge.config import CONFIG_DIR, FinetuneRunConfig, dump_toml, load_run_config


@pytest.mark.parametrize("method", ["sft", "dpo", "distill", "grpo"])
def test_shipped_finetune_configs(tmp_path, method):
    run = load_run_config(f"{method}-smollm2", cls=FinetuneRunConfig)
    assert (CONFIG_DIR / f"{method}-smollm2.toml").is_file()
    assert run.finetune.method == method
    assert run.train.dtype == "auto" and run.train.eval_at_start
    dump_toml(run, tmp_path / "x.toml")
    assert load_run_config(str(tmp_path / "x.toml"), cls=FinetuneRunConfig) == run
