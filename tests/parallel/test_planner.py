"""The memory planner (parallel/planner.py): hand-counted model states, the order of its layouts,
activations against torch's own memory tracker, and the start-up warning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.distributed._tools.mem_tracker import MemTracker

from lmforge.config import RunConfig
from lmforge.models.config import ModelConfig
from lmforge.models.presets import model_preset
from lmforge.models.transformer import Transformer
from lmforge.parallel import planner
from lmforge.parallel.activation_checkpointing import apply_activation_checkpointing
from lmforge.parallel.activation_memory import activation_bytes
from lmforge.parallel.planner import (
    CHECKPOINTING,
    Layout,
    PlanInput,
    count_model,
    estimate,
    estimate_plan,
    layouts,
    startup_warning,
)

# 2 layers, width 16, 2 heads of 8, SwiGLU hidden 32, vocabulary 64, untied head.
HAND = ModelConfig(vocab_size=64, dim=16, num_layers=2, num_heads=2, ffn_dim=32, context_length=8)


def hand_plan(world_size: int, **changes) -> PlanInput:
    settings = dict(model=HAND, micro_batch_size=1, seq_len=8, dtype="fp32", optimizer="adamw")
    return PlanInput(**(settings | {"world_size": world_size, "device": "cpu"} | changes))


def test_counts_of_a_tiny_model_by_hand() -> None:
    # block: 2 norms of 16, qkv 16 x (2 + 2 + 2) * 8 = 768, out 16 x 16 = 256,
    # up 16 x 2 * 32 = 1,024, down 32 x 16 = 512: 2,592. Root: embedding 64 x 16, final norm 16,
    # head 16 x 64: 2,064. Total 2 x 2,592 + 2,064 = 7,248.
    counts = count_model(HAND)
    assert (counts.parameters, counts.largest_block, counts.root) == (7248, 2592, 2064)


def test_model_states_per_strategy_at_four_ranks_by_hand() -> None:
    P = 7248
    ddp = estimate_plan(hand_plan(4), Layout("ddp"))
    # fp32 weights; gradients plus DDP's bucket copy; AdamW's two fp32 moments
    assert (ddp.parameters, ddp.gradients, ddp.optimizer) == (4 * P, 8 * P, 8 * P)
    # ZeRO-1 deals the matrices out largest first to the emptiest rank (4 x 1,024, then 768,
    # 768, 512, 512, 256, 256: 1,792 each), then the five norms of 16: one rank gets two, 1,824.
    zero1 = estimate_plan(hand_plan(4), Layout("zero1"))
    assert (zero1.parameters, zero1.gradients, zero1.optimizer) == (4 * P, 8 * P, 8 * 1824)
    fsdp = estimate_plan(hand_plan(4), Layout("fsdp"))
    assert (fsdp.parameters, fsdp.gradients, fsdp.optimizer) == (P, P, 2 * P)
    # one rank: no DDP buckets (a plain model)
    assert estimate_plan(hand_plan(1), Layout("ddp")).gradients == 4 * P


def test_fsdp_transient_and_accumulation_by_hand() -> None:
    P, block, root = 7248, 2592, 2064
    fsdp = estimate_plan(hand_plan(4, dtype="bf16"), Layout("fsdp"))
    # two gathered bf16 blocks, the bf16 root gathered with its bf16 gradients, and one block's
    # bf16 gradients with their fp32 copy for the reduce-scatter
    assert fsdp.transient == 2 * 2 * block + 2 * 2 * root + (2 + 4) * block
    accumulating = estimate_plan(hand_plan(4, accumulation=2), Layout("fsdp"))
    assert accumulating.gradients == 4 * P / 4  # reduce-scattered every micro-step


def test_muon_keeps_one_moment_for_the_layer_matrices() -> None:
    # Muon: qkv, out, up, down of both layers (2 x 2,560); AdamW: the rest
    muon = estimate_plan(hand_plan(1, optimizer="muon"), Layout("ddp"))
    assert muon.optimizer == 4 * 5120 + 8 * (7248 - 5120)


def test_layouts_fastest_first_and_only_trainable_ones() -> None:
    gpu = [(x.name, x.activation_checkpointing) for x in layouts(hand_plan(8, device="cuda"))]
    # tensor parallelism after FSDP alone, by degrees that divide the node's ranks and the heads
    degrees = [tp for tp in (2, 4, 8) if HAND.num_heads % tp == 0 and HAND.kv_heads % tp == 0]
    names = ["ddp", "zero1", "fsdp", *(f"fsdp+tp{tp}" for tp in degrees), "fsdp+offload"]
    assert gpu == [(name, mode) for name in names for mode in CHECKPOINTING]
    assert all(x.tensor_parallel == 1 for x in layouts(hand_plan(8)))  # none on a CPU
    assert "fsdp+offload" not in {x.name for x in layouts(hand_plan(8))}  # the host is the device
    assert {x.strategy for x in layouts(hand_plan(8, optimizer="muon"))} == {"ddp"}
    assert "fsdp" not in {x.strategy for x in layouts(hand_plan(8, dtype="fp16", device="cuda"))}


def test_keyword_form_for_a_model_config() -> None:
    """estimate(config, layout, world_size=..., ...): the form the GPU check's meta-fsdp stage calls."""
    direct = estimate(HAND, Layout("fsdp", "full"), world_size=4, micro_batch=2, seq_len=8)
    plan = PlanInput(HAND, 2, 8, "bf16", "adamw", 4, "cuda")
    assert direct == estimate_plan(plan, Layout("fsdp", "full"))


@pytest.mark.parametrize("preset", ["llama3.2-1b", "deepseek-v2-lite", "gpt2"])
def test_more_ranks_never_more_memory_per_rank_under_fsdp(preset: str) -> None:
    model = model_preset(preset)
    model = dataclasses.replace(model, vocab_size=model.vocab_size or 50304)
    plan = PlanInput(model, 2, 1024, "bf16", "adamw", 1, "cuda", accumulation=4)
    counts = count_model(model)
    for layout in (Layout("fsdp", mode, offload) for mode in CHECKPOINTING for offload in (0, 1)):
        totals = [
            estimate_plan(dataclasses.replace(plan, world_size=n), layout, counts).total
            for n in (1, 2, 4, 8, 64, 1024)
        ]
        assert totals == sorted(totals, reverse=True), (layout, totals)


@pytest.mark.parametrize("dtype", [4, 2])
@pytest.mark.parametrize("preset", ["llama3.2-1b", "deepseek-v2-lite", "gpt2", "tiny-mixtral"])
def test_checkpointing_never_keeps_more_activations(preset: str, dtype: int) -> None:
    model = model_preset(preset)
    model = dataclasses.replace(model, vocab_size=model.vocab_size or 50304)
    none, selective, full = (activation_bytes(model, 2, 512, dtype, m) for m in CHECKPOINTING)
    assert full <= none and selective <= none
    if model.num_layers >= 4:  # a shallow stack rebuilds a block bigger than selective keeps
        assert full <= selective


def _tracked_peak(config: ModelConfig, mode: str, dtype: str) -> float:
    """Peak bytes of one forward and backward (4 x 64 tokens) as torch's MemTracker sees it."""
    torch.manual_seed(0)
    model = Transformer(config)
    apply_activation_checkpointing(model.layers, mode)
    tokens = torch.randint(0, config.vocab_size, (4, 64))

    def loss() -> torch.Tensor:  # the logits die with this frame, as in evals/loss.py
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(tokens)
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())

    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        loss().backward()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", CHECKPOINTING)
def test_estimate_against_torch_memory_tracker(mode: str, dtype: str) -> None:
    """A plain model's weights, gradients and activations are never below the peak torch tracks,
    and without checkpointing the activations (bf16 weight copies included) are within 10% of
    what it tracks besides the weights. The planner counts gradients and activations as alive
    together (as they are while micro-steps accumulate); in one plain step they overlap only in
    part, so the sum is above the peak, by up to 60% for this small model."""
    config = ModelConfig(vocab_size=512, dim=128, num_layers=3, num_heads=4, num_kv_heads=2)
    plan = PlanInput(config, 4, 64, dtype, "adamw", 1, "cpu")
    planned = estimate_plan(plan, Layout("ddp", mode))
    tracked = _tracked_peak(config, mode, dtype)
    activations = planned.activations + planned.transient  # the bf16 weight copies
    total = planned.parameters + planned.gradients + activations
    assert 1.0 <= total / tracked <= 1.6, total / tracked
    if mode == "none":
        assert activations == pytest.approx(tracked - planned.parameters, rel=0.1)


def _big_run(**train) -> RunConfig:
    run = RunConfig()
    model = dataclasses.replace(model_preset("llama3.2-1b"), context_length=256)
    return dataclasses.replace(
        run, model=model, train=dataclasses.replace(run.train, dtype="fp32", **train)
    )


def test_startup_warning_on_a_small_host(monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(planner, "host_memory_available", lambda: 8 * 2**30)
    warning = startup_warning(_big_run(), 2, torch.device("cpu"))
    assert warning is not None and "\n" not in warning
    assert "ddp with activation_checkpointing=none needs about" in warning
    assert "4.00 GiB host MemAvailable / 2 ranks per node" in warning
    tiny = dataclasses.replace(RunConfig(), model=model_preset("tiny-llama"))
    tiny = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, vocab_size=320))
    assert startup_warning(tiny, 2, torch.device("cpu")) is None


def test_startup_warning_on_a_gpu_names_a_layout_that_fits(monkeypatch) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (20 * 2**30, 24 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Test GPU")
    run = dataclasses.replace(_big_run(), train=dataclasses.replace(_big_run().train, dtype="bf16"))
    warning = startup_warning(run, 8, torch.device("cuda", 0))
    assert "20.00 GiB free on Test GPU" in warning
    assert "fsdp with activation_checkpointing=none should fit" in warning
