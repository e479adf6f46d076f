"""models/footprint.py: the weight bytes it counts are the model's, the memory it reads is this
machine's, and the refusal is one line that names what is needed and what is free."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import ResourceError
from lmforge.models import footprint
from lmforge.models.counting import build_on_meta, count_parameters
from lmforge.models.presets import model_preset


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-mixtral", "tiny-deepseek"])
def test_weights_bytes_are_the_parameters_at_the_dtype(preset):
    config = model_preset(preset, vocab_size=320)
    model = build_on_meta(config)
    parameters = count_parameters(model)  # a tied head counts once
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # MoE load counters
    assert footprint.weights_bytes(config, 4) == 4 * parameters + buffers
    assert footprint.weights_bytes(config, 2) == 2 * parameters + buffers


def test_an_unset_vocab_counts_the_smallest_tokenizer():
    config = model_preset("tiny-llama", vocab_size=None)
    assert footprint.weights_bytes(config) == footprint.weights_bytes(
        model_preset("tiny-llama", vocab_size=256)
    )


def test_available_memory_is_read_from_this_machine():
    free = footprint.available_bytes("cpu")
    assert free is not None and free > 0
    assert footprint.available_bytes("meta") is None  # no memory to speak of: not refused


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (24 * 10**9, "24 GB"), (2**46, "70 TB")],
)
def test_format_bytes(count, text):
    assert footprint.format_bytes(count) == text


def test_refused_in_one_line_with_need_and_free(monkeypatch):
    monkeypatch.setattr(footprint, "available_bytes", lambda device="cpu": 24 * 10**9)
    config = model_preset("tiny-llama", vocab_size=2**24, dim=2**20, num_heads=16)
    with pytest.raises(ResourceError) as caught:
        footprint.refuse_if_too_large(config, "ckpt/x")
    message = str(caught.value)
    assert (
        message.startswith("ckpt/x: model needs ") and "TB of fp32 weights; 24 GB free" in message
    )


def test_the_bytes_per_parameter_are_named(monkeypatch):
    monkeypatch.setattr(footprint, "available_bytes", lambda device="cpu": 1000)
    config = model_preset("tiny-llama", vocab_size=320)
    with pytest.raises(ResourceError, match="of 16-bit weights; 1.0 kB free"):
        footprint.refuse_if_too_large(config, "x", bytes_per_param=2)
    with pytest.raises(ResourceError, match="of fp32 weights, twice; "):
        footprint.refuse_if_too_large(config, "x", bytes_per_param=8)


def test_a_huge_context_names_the_position_tables(monkeypatch):
    monkeypatch.setattr(footprint, "available_bytes", lambda device="cpu": 10**9)
    config = model_preset("tiny-llama", vocab_size=320, context_length=2**30)
    with pytest.raises(ResourceError, match=r"position tables \(model.context_length\)"):
        footprint.refuse_if_too_large(config, "x")


def test_what_fits_passes_and_returns_the_bytes(monkeypatch):
    config = model_preset("tiny-llama", vocab_size=320)
    needed = footprint.refuse_if_too_large(config, "x")
    assert needed >= footprint.weights_bytes(config)
    monkeypatch.setattr(footprint, "available_bytes", lambda device="cpu": None)
    assert footprint.refuse_if_too_large(config, "x") == needed  # unknown memory: no refusal


def test_materialize_turns_an_allocation_failure_into_one_line(monkeypatch):
    model = build_on_meta(model_preset("tiny-llama", vocab_size=320))

    def fail(self, device, recurse=True):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127]\nDefaultCPUAllocator: can't allocate"
        )

    monkeypatch.setattr(torch.nn.Module, "to_empty", fail)
    with pytest.raises(ResourceError, match="x: could not allocate the model's weights"):
        footprint.materialize(model, "cpu", "x")

    def bug(self, device, recurse=True):
        raise RuntimeError("a bug")

    monkeypatch.setattr(torch.nn.Module, "to_empty", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # other errors are not disguised
        footprint.materialize(model, "cpu", "x")
