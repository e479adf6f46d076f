"""The table `lmforge presets` prints: every named preset's parameters, training FLOPs per
token and model-state memory per GPU under DDP, ZeRO-1 and FSDP."""

from __future__ import annotations

import dataclasses

from lmforge.models.counting import build_on_meta, count_parameters, flops_per_token
from lmforge.models.memory import model_state_bytes
from lmforge.models.presets import PRESETS, model_preset

# Presets whose vocabulary follows the tokenizer are counted with this many tokens.
STAND_IN_VOCAB = 4096


def print_presets_table(seq_len: int, gpus: int) -> None:
    """seq_len: the sequence length for attention's share of FLOPs per token; gpus: the world
    size for the memory-per-GPU columns."""
    print(f"{'':<43}GiB per GPU at {gpus} GPUs")
    print(
        f"{'preset':<14} {'parameters':>14} {'GFLOPs/token':>13}  {'ddp':>7} {'zero1':>7} {'fsdp':>7}"
    )
    for name in PRESETS:
        config = model_preset(name)
        if config.vocab_size is None:
            config = dataclasses.replace(config, vocab_size=STAND_IN_VOCAB)
            name += " *"
        model = build_on_meta(config)
        parameters = count_parameters(model)
        memory = [
            model_state_bytes(parameters, strategy, gpus) / 2**30
            for strategy in ("ddp", "zero1", "fsdp")
        ]
        flops = flops_per_token(model, min(seq_len, config.context_length))
        print(
            f"{name:<14} {parameters:>14,} {flops / 1e9:>13.3f}  "
            f"{memory[0]:>7.2f} {memory[1]:>7.2f} {memory[2]:>7.2f}"
        )
    print(
        f"* vocab follows the tokenizer; counted here with {STAND_IN_VOCAB}. GFLOPs/token: "
        f"training at seq_len {seq_len}. GiB: fp32 weights, gradients and AdamW moments; "
        "activations come on top."
    )
