"""Starting weights and teachers come from an lmforge checkpoint, a GGUF file or an HF dir, read
in memory, all giving the same model; a LoRA checkpoint is refused with a pointer to merge."""

from __future__ import annotations

import pytest
import torch
from finetune_fixtures import tiny_base  # noqa: F401

from lmforge.checkpoint.adapters import ADAPTER_CONFIG
from lmforge.checkpoint.directory import load_model
from lmforge.checkpoint.pretrained import load_pretrained
from lmforge.errors import CheckpointError
from lmforge.interop.gguf_export import export_gguf
from lmforge.interop.hf_dir import export_hf


def test_checkpoint_gguf_and_hf_dir_give_the_same_weights(tmp_path, tiny_base):  # noqa: F811
    config, state, tokenizer = load_pretrained(tiny_base)
    hf = export_hf(tiny_base, tmp_path / "hf")
    gguf = export_gguf(tiny_base, tmp_path / "model.gguf", dtype="f32")
    for source in (hf, gguf):
        other_config, other_state, other_tokenizer = load_pretrained(source)
        assert other_config.shape_dict() == config.shape_dict()
        assert other_tokenizer.vocab_size == tokenizer.vocab_size
        for key, tensor in state.items():
            torch.testing.assert_close(other_state[key], tensor, rtol=0, atol=1e-6)


def test_adapter_checkpoint_is_refused(tmp_path, tiny_base):  # noqa: F811
    import shutil

    copy = shutil.copytree(tiny_base, tmp_path / "adapters")
    (copy / ADAPTER_CONFIG).write_text("{}")
    with pytest.raises(CheckpointError, match="only LoRA adapters; run `lmforge merge"):
        load_pretrained(copy)
    # load_model refuses them itself (sample, chat, serve, eval and export all load through it),
    # though this copy still holds the base's full model.safetensors
    with pytest.raises(CheckpointError, match="only LoRA adapters; run `lmforge merge"):
        load_model(copy)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "missing")
